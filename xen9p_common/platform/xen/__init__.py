"""The real-Xen platform: pyxs/xenbus xenstore, /dev/xen/gntdev grants, /dev/xen/evtchn.

make_platform() only composes factories; nothing is opened until a factory is called.
"""
from __future__ import annotations

from ...errors import Xen9pError
from .. import EventChannels, GrantMapper, Platform, XenStore


def _xenstore() -> XenStore:
    # Imported here so the sim platform and unit tests never need pyxs or /proc/xen.
    from .xenstore import open_xenstore
    return open_xenstore()


def _grants() -> GrantMapper:
    from .gntdev import GntdevMapper
    return GntdevMapper()


def _evtchn() -> EventChannels:
    from .evtchn import XenEventChannels
    return XenEventChannels()


def read_self_domid(xenstore=_xenstore) -> int:
    """Our domid from the relative 'domid' node (a driver domain is not dom0); 0 if unknown."""
    try:
        xs = xenstore()
    except (Xen9pError, OSError, ImportError):
        return 0
    try:
        value = xs.read("domid")
    except (Xen9pError, OSError, ValueError):
        value = None
    finally:
        xs.close()
    return int(value) if value is not None and value.strip().isdigit() else 0


def make_platform() -> Platform:
    return Platform(name="xen", xenstore=_xenstore, grants=_grants, evtchn=_evtchn,
                    self_domid=read_self_domid())
