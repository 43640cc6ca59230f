"""Interdomain event channels on a real dom0 through /dev/xen/evtchn.

Layouts and ioctl numbers follow Linux include/uapi/xen/evtchn.h (see reference/xen-9pfs.md).
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct

from .. import EventChannels
from .gntdev import _IOC_NONE, ioc, platform_error

EVTCHN_PATH = "/dev/xen/evtchn"

# struct ioctl_evtchn_bind_virq {u32 virq}
BIND_VIRQ = struct.Struct("=I")
# struct ioctl_evtchn_bind_interdomain {u32 remote_domain; u32 remote_port}
BIND_INTERDOMAIN = struct.Struct("=II")
# struct ioctl_evtchn_bind_unbound_port {u32 remote_domain}
BIND_UNBOUND_PORT = struct.Struct("=I")
# struct ioctl_evtchn_unbind / ioctl_evtchn_notify {u32 port}
PORT = struct.Struct("=I")
# struct ioctl_evtchn_restrict_domid {domid_t domid}
RESTRICT_DOMID = struct.Struct("=H")

IOCTL_EVTCHN_BIND_VIRQ = ioc(_IOC_NONE, "E", 0, BIND_VIRQ.size)
IOCTL_EVTCHN_BIND_INTERDOMAIN = ioc(_IOC_NONE, "E", 1, BIND_INTERDOMAIN.size)
IOCTL_EVTCHN_BIND_UNBOUND_PORT = ioc(_IOC_NONE, "E", 2, BIND_UNBOUND_PORT.size)
IOCTL_EVTCHN_UNBIND = ioc(_IOC_NONE, "E", 3, PORT.size)
IOCTL_EVTCHN_NOTIFY = ioc(_IOC_NONE, "E", 4, PORT.size)
IOCTL_EVTCHN_RESET = ioc(_IOC_NONE, "E", 5, 0)
IOCTL_EVTCHN_RESTRICT_DOMID = ioc(_IOC_NONE, "E", 6, RESTRICT_DOMID.size)

# One read drains at most this many fired ports; the driver caps a read at a page.
MAX_PORTS_PER_READ = 1024


class XenEventChannels(EventChannels):
    """One open of /dev/xen/evtchn; closing it unbinds every port bound through it."""

    def __init__(self, path: str = EVTCHN_PATH) -> None:
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise platform_error(e.errno or errno.EIO, f"open {path}") from e
        self._ports: set[int] = set()

    def _ioctl(self, request: int, arg: bytes, what: str) -> int:
        try:
            return fcntl.ioctl(self._fd, request, bytearray(arg), True)
        except OSError as e:
            raise platform_error(e.errno or errno.EIO, f"evtchn {what}") from e

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> int:
        port = self._ioctl(IOCTL_EVTCHN_BIND_INTERDOMAIN,
                           BIND_INTERDOMAIN.pack(remote_domid, remote_port),
                           f"BIND_INTERDOMAIN dom{remote_domid} port {remote_port}")
        self._ports.add(port)
        return port

    def alloc_unbound(self, remote_domid: int) -> int:
        """A fresh port that `remote_domid` may bind to (what a frontend does)."""
        port = self._ioctl(IOCTL_EVTCHN_BIND_UNBOUND_PORT, BIND_UNBOUND_PORT.pack(remote_domid),
                           f"BIND_UNBOUND_PORT dom{remote_domid}")
        self._ports.add(port)
        return port

    def fileno(self) -> int:
        return self._fd

    def pending(self) -> list[int]:
        try:
            data = os.read(self._fd, PORT.size * MAX_PORTS_PER_READ)
        except BlockingIOError:
            return []
        except OSError as e:
            # EFBIG: the driver's ring overflowed; the caller must rescan everything.
            raise platform_error(e.errno or errno.EIO, "evtchn read") from e
        n = len(data) // PORT.size
        return list(struct.unpack(f"={n}I", data[:n * PORT.size]))

    def unmask(self, port: int) -> None:
        try:
            os.write(self._fd, PORT.pack(port))
        except OSError as e:
            raise platform_error(e.errno or errno.EIO, f"evtchn unmask port {port}") from e

    def notify(self, port: int) -> None:
        self._ioctl(IOCTL_EVTCHN_NOTIFY, PORT.pack(port), f"NOTIFY port {port}")

    def unbind(self, port: int) -> None:
        self._ioctl(IOCTL_EVTCHN_UNBIND, PORT.pack(port), f"UNBIND port {port}")
        self._ports.discard(port)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._ports.clear()
