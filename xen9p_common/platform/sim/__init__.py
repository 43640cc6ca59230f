"""The simulated Xen platform: processes on one machine share a sim directory.

make_platform() composes factories over that directory; sim_paths() documents its layout.
"""
from __future__ import annotations

import os

from .. import EventChannels, GrantMapper, Platform, XenStore

XENSTORED_SOCKET = "xenstored.sock"


def sim_paths(sim_dir: str) -> dict[str, str]:
    """Where each piece of the simulated Xen lives inside sim_dir.

    xenstored: the Unix socket of `xen9psim xenstored` (real xenstore wire protocol).
    mem:       dom<N>.pages (the guest's memory, pages of 4096 bytes, created by the
               guest side with its size) and dom<N>.gnttab (grant_entry_v1 array:
               u16 flags, u16 granted-to domid, u32 frame; refs 0-7 reserved).
    evtchn:    dom<N>.ports (the domain's event-channel port table; each handle also
               binds an abstract Unix datagram socket named after the sim dir as its
               doorbell, so nothing else appears on disk).
    """
    return {
        "xenstored": os.path.join(sim_dir, XENSTORED_SOCKET),
        "mem": os.path.join(sim_dir, "mem"),
        "evtchn": os.path.join(sim_dir, "evtchn"),
    }


def make_platform(sim_dir: str, self_domid: int = 0) -> Platform:
    sim_dir = os.path.abspath(sim_dir)

    def xenstore() -> XenStore:
        # Imported lazily: the wire client is a separate module that pulls in sockets only.
        from ..xswire import XsWireClient
        return XsWireClient(sim_paths(sim_dir)["xenstored"])

    def grants() -> GrantMapper:
        from .grants import SimGrantMapper
        return SimGrantMapper(sim_dir, self_domid)

    def evtchn() -> EventChannels:
        from .evtchn import SimEventChannels
        return SimEventChannels(sim_dir, self_domid)

    return Platform(name="sim", xenstore=xenstore, grants=grants, evtchn=evtchn,
                    self_domid=self_domid)
