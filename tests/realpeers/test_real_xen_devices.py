"""gntdev and evtchn against a real dom0 kernel, by looping back to our own domain.

Pages are granted with /dev/xen/gntalloc and mapped back with GntdevMapper, as libxengnttab's tests do.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import select
import struct
import time

import pytest

from xen9p_common.platform.xen.gntdev import PAGE_SIZE, ioc

pytestmark = pytest.mark.realxen

GNTDEV = "/dev/xen/gntdev"
GNTALLOC = "/dev/xen/gntalloc"
EVTCHN = "/dev/xen/evtchn"

# struct ioctl_gntalloc_alloc_gref {u16 domid; u16 flags; u32 count; u64 index; u32 gref_ids[1]}
ALLOC_GREF = struct.Struct("=HHIQ")
IOCTL_GNTALLOC_ALLOC_GREF = ioc(0, "G", 5, 24)
# struct ioctl_gntalloc_dealloc_gref {u64 index; u32 count}
IOCTL_GNTALLOC_DEALLOC_GREF = ioc(0, "G", 6, 16)
GNTALLOC_FLAG_WRITABLE = 1


def need(*paths: str) -> None:
    for path in paths:
        if not os.path.exists(path):
            pytest.skip(f"{path} is absent: not a Xen dom0")
    if os.geteuid() != 0:
        pytest.skip("the /dev/xen devices need root")


def self_domid() -> int:
    # A loopback grant must name our own domain; dom0 unless this is a driver domain.
    return int(os.environ.get("XEN9P_SELF_DOMID", "0"))


def test_gntdev_maps_pages_granted_by_ourselves():
    need(GNTDEV, GNTALLOC)
    from xen9p_common.platform.xen.gntdev import GntdevMapper
    count = 3
    afd = os.open(GNTALLOC, os.O_RDWR | os.O_CLOEXEC)
    try:
        arg = bytearray(ALLOC_GREF.size + 4 * count)
        ALLOC_GREF.pack_into(arg, 0, self_domid(), GNTALLOC_FLAG_WRITABLE, count, 0)
        fcntl.ioctl(afd, IOCTL_GNTALLOC_ALLOC_GREF, arg, True)
        index = ALLOC_GREF.unpack_from(arg, 0)[3]
        refs = list(struct.unpack_from(f"={count}I", arg, ALLOC_GREF.size))
        granted = mmap.mmap(afd, count * PAGE_SIZE, mmap.MAP_SHARED, offset=index)
        granted[PAGE_SIZE:PAGE_SIZE + 5] = b"hello"
        mapper = GntdevMapper()
        m = mapper.map(self_domid(), refs)
        assert len(m.buf) == count * PAGE_SIZE
        assert bytes(m.buf[PAGE_SIZE:PAGE_SIZE + 5]) == b"hello"
        m.buf[2 * PAGE_SIZE:2 * PAGE_SIZE + 3] = b"xyz"
        assert granted[2 * PAGE_SIZE:2 * PAGE_SIZE + 3] == b"xyz"
        m.unmap()
        mapper.close()
        granted.close()
        fcntl.ioctl(afd, IOCTL_GNTALLOC_DEALLOC_GREF, bytearray(struct.pack("=QI4x", index, count)), True)
    finally:
        os.close(afd)


def test_evtchn_loopback_notify_mask_unmask():
    need(EVTCHN)
    from xen9p_common.platform.xen.evtchn import XenEventChannels
    front, back = XenEventChannels(), XenEventChannels()
    try:
        fport = front.alloc_unbound(self_domid())
        lport = back.bind_interdomain(self_domid(), fport)

        def wait(ev, timeout=10.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if select.select([ev], [], [], deadline - time.monotonic())[0]:
                    ports = ev.pending()
                    if ports:
                        return ports
            return []

        back.pending()  # a fresh bind may or may not report itself: start clean
        back.unmask(lport)
        front.notify(fport)
        assert wait(back) == [lport]
        front.notify(fport)  # masked: held as pending until unmask
        back.unmask(lport)
        assert wait(back) == [lport]
        back.unmask(lport)
        back.notify(lport)
        assert wait(front) == [fport]
        back.unbind(lport)
    finally:
        back.close()
        front.close()
