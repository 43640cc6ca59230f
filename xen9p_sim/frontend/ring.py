"""One ring of the simulated 9pfs frontend: pages from guest memory, granted to the backend, and an event channel.

Set up like Linux trans_xen.c (data pages as one run, intf page last); release waits for the backend to unmap.
"""
from __future__ import annotations

import errno
import struct
import threading
import time

from xen9p_common.errors import Xen9pError
from xen9p_common.ring import FrontendRing, Intf, IntfLayout, ring_size
from xen9p_common.platform.sim.evtchn import SimEventChannels
from xen9p_common.platform.sim.grants import SimDomainMemory

# What Linux's trans_xen.c hard-codes.
LINUX_NUM_RINGS = 2
LINUX_MAX_RING_ORDER = 9
LINUX_MAXSIZE = 512 * 1024
LINUX_DEFAULT_MSIZE = 128 * 1024 + 24

POLL = 0.05  # seconds between re-checks of a condition that has no wakeup of its own


class FrontendError(Xen9pError):
    """The simulated frontend could not connect (or the backend closed under it)."""


def transport_maxsize(order: int) -> int:
    """trans_xen.c: 512 KiB, or half a ring half when the ring is smaller than that."""
    size = ring_size(order)
    return size // 2 if LINUX_MAXSIZE > size else LINUX_MAXSIZE


class GuestRing:
    """One ring of the frontend: its pages, grant refs, event channel and FrontendRing."""

    def __init__(self, mem: SimDomainMemory, backend_id: int, order: int, written_order: int,
                 evtchn: SimEventChannels) -> None:
        self.order = order
        self.frames: list[int] = []
        self.refs: list[int] = []
        self.lock = threading.Lock()  # one request written at a time, as Linux's ring lock
        self.port = 0
        self._mem = mem
        # Data pages first, as one ascending run, so the guest sees one contiguous data area.
        data_frames = sorted(mem.alloc_pages(1 << order))
        self.frames = data_frames + mem.alloc_pages(1)
        self.intf_frame = self.frames[-1]
        self.intf_ref = mem.grant_access(self.intf_frame, backend_id)
        self.refs.append(self.intf_ref)
        data_refs = [mem.grant_access(f, backend_id) for f in data_frames]
        self.refs.extend(data_refs)
        self.intf_view: memoryview | None = mem.page(self.intf_frame)
        Intf(self.intf_view).setup(order, data_refs)
        if written_order != order:
            struct.pack_into("<I", self.intf_view, IntfLayout.RING_ORDER, written_order)
        self.data_view: memoryview | None = _contiguous(mem, data_frames)
        self.fr: FrontendRing | None = FrontendRing(self.intf_view, self.data_view, order)
        self.port = evtchn.alloc_unbound(backend_id)

    def reply_size_at_cons(self) -> int:
        """The size field of the reply at in_cons (it may straddle the end of the in half)."""
        size = self.fr.size
        pos = self.fr.in_cons & (size - 1)
        head = bytes(self.data_view[pos:min(pos + 4, size)])
        if len(head) < 4:
            head += bytes(self.data_view[0:4 - len(head)])
        return int.from_bytes(head, "little")

    def reload(self) -> None:
        """Re-read our indexes from the page after a misbehaviour wrote them behind our back."""
        if self.fr is not None:
            self.fr.release()
        self.fr = FrontendRing(self.intf_view, self.data_view, self.order)

    def release(self, evtchn: SimEventChannels | None, deadline: float) -> list[int]:
        """Unbind and end every grant; returns the refs a backend still maps (leaked, like Linux)."""
        if evtchn is not None and self.port:
            try:
                evtchn.unbind(self.port)
            except Xen9pError:
                pass
            self.port = 0
        busy = list(self.refs)
        while busy:
            still = []
            for ref in busy:
                try:
                    self._mem.end_access(ref)
                except Xen9pError as e:
                    if getattr(e, "errno", None) != errno.EBUSY:
                        raise
                    still.append(ref)
            busy = still
            if not busy or time.monotonic() >= deadline:
                break
            time.sleep(POLL)  # nothing signals an unmap; Linux defers with a timer too
        self.refs = busy
        if not busy:
            # Descending, so the free list hands the run out ascending again on reconnect.
            self._mem.free_pages(sorted(self.frames, reverse=True))
            self.frames = []
        self.drop_views()
        return busy

    def drop_views(self) -> None:
        """Let go of guest memory, so the domain's mapping can be closed."""
        if self.fr is not None:
            self.fr.release()
        self.fr = None
        for v in (self.intf_view, self.data_view):
            if v is not None:
                v.release()
        self.intf_view = self.data_view = None


def _contiguous(mem: SimDomainMemory, frames: list[int]) -> memoryview:
    """One view over the ring's data frames, which must be one run (the guest sees one buffer)."""
    if any(b != a + 1 for a, b in zip(frames, frames[1:])):
        raise FrontendError(f"dom{mem.domid}: ring data pages are not one run of frames")
    return mem.pages_view(frames[0], len(frames))

