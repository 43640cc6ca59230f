"""The Xen 9pfs flex ring over memoryviews: intf layout, queued math, whole requests in, whole replies out.

Pure: no mapping, no event channels; the worker maps the pages and hands them over as memoryviews.
"""
from __future__ import annotations

import struct
import sys
from typing import Final, Iterator

from xen9p_common.errors import RingError, Xen9pError

# Memory ordering. Xen's recipe is: producer reads indexes, full barrier, writes data,
# write barrier, advances prod; consumer reads prod, read barrier, reads data, full
# barrier, advances cons. On x86-64 (TSO) loads are not reordered with loads, stores
# not with stores, and loads not with later stores, so plain program order is enough
# as long as every index access is ONE aligned 4-byte load or store. CPython's
# struct module swaps in its native (memcpy-based) unpack/pack functions for '<I' on
# little-endian hosts, and a constant 4-byte memcpy compiles to one mov: no torn
# indexes. Other architectures would need real fences; we only support x86-64 dom0s.
_U32 = struct.Struct("<I")
_load = _U32.unpack_from  # loads only: stores of index words go through _words()

if sys.byteorder != "little":  # the index words are little-endian u32s read through a native view
    raise ImportError("xen9p_common.ring needs a little-endian host (x86, arm)")


def _words(intf: memoryview) -> memoryview:
    """The intf page as native u32 words: item stores are single aligned 4-byte stores.

    Never struct.pack_into for an index: it zero-fills the field before writing it, so a
    peer polling the index can read 0 in between (seen under load as a ring violation).
    """
    mv = memoryview(intf)
    if mv.format != "B":
        mv = mv.cast("B")
    return mv[: len(mv) & ~3].cast("I")
_M32 = 0xFFFFFFFF

HEADER_SIZE = 7  # size[4] type[1] tag[2]


class IntfLayout:
    """Byte offsets in `struct xen_9pfs_data_intf` (one granted page per ring)."""

    IN_CONS: Final = 0
    IN_PROD: Final = 4
    OUT_CONS: Final = 64
    OUT_PROD: Final = 68
    RING_ORDER: Final = 128
    REF: Final = 132
    PAGE_SIZE: Final = 4096
    MAX_RING_ORDER: Final = 9  # largest order whose ref array fits in the page


class NoRoom(Xen9pError):
    """The ring half has no room for this message yet: wait for the peer to consume."""


def ring_size(order: int) -> int:
    """Bytes in each half (in, out) of a ring of `order`: XEN_FLEX_RING_SIZE."""
    return 1 << (order + 11)


def max_refs_in_intf_page(page_size: int = IntfLayout.PAGE_SIZE) -> int:
    """How many u32 grant refs fit after the fixed part of the intf page."""
    return (page_size - IntfLayout.REF) // 4


def queued(prod: int, cons: int, size: int) -> int:
    """Bytes queued between free-running indexes, resolving full vs empty as Xen does."""
    if prod == cons:
        return 0
    mask = size - 1
    p = prod & mask
    c = cons & mask
    if p == c:
        return size
    return p - c if p > c else size - (c - p)


def segments_for(buf: memoryview, start: int, length: int, size: int) -> list[memoryview]:
    """One or two views of `buf` (a ring half of `size` bytes) covering `length` bytes from index `start`."""
    pos = start & (size - 1)
    end = pos + length
    if end <= size:
        return [buf[pos:end]]
    return [buf[pos:size], buf[0:end - size]]


def _read_u32_wrapped(buf: memoryview, pos: int, size: int) -> int:
    # A header that straddles the wrap: slow path, at most once per ring lap.
    if pos + 4 <= size:
        return _load(buf, pos)[0]
    head = bytes(buf[pos:size])
    return int.from_bytes(head + bytes(buf[0:4 - len(head)]), "little")


def _copy(buf: memoryview, start: int, length: int, size: int) -> bytes:
    pos = start & (size - 1)
    end = pos + length
    if end <= size:
        return bytes(buf[pos:end])
    return bytes(buf[pos:size]) + bytes(buf[0:end - size])


def _write(buf: memoryview, start: int, data: bytes | memoryview, size: int) -> None:
    pos = start & (size - 1)
    n = len(data)
    end = pos + n
    if end <= size:
        buf[pos:end] = data
    else:
        first = size - pos
        mv = memoryview(data)
        buf[pos:size] = mv[:first]
        buf[0:end - size] = mv[first:]


class Intf:
    """The intf page: u32 index loads/stores, ring_order and refs read once."""

    # No lasting view of the page is kept: a caller must be able to unmap it right after
    # (even while an exception from read_refs still holds this object in a traceback).
    __slots__ = ("buf", "ring_order", "refs")

    def __init__(self, buf: memoryview) -> None:
        if len(buf) < IntfLayout.REF:
            raise ValueError(f"intf page too small: {len(buf)} bytes")
        self.buf = buf
        self.ring_order: int | None = None
        self.refs: tuple[int, ...] | None = None

    def load(self, offset: int) -> int:
        return _load(self.buf, offset)[0]  # one aligned 4-byte read

    def store(self, offset: int, value: int) -> None:
        with _words(self.buf) as w:
            w[offset >> 2] = value & _M32

    def in_cons(self) -> int:
        return self.load(IntfLayout.IN_CONS)

    def in_prod(self) -> int:
        return self.load(IntfLayout.IN_PROD)

    def out_cons(self) -> int:
        return self.load(IntfLayout.OUT_CONS)

    def out_prod(self) -> int:
        return self.load(IntfLayout.OUT_PROD)

    def read_refs(self, max_order: int = IntfLayout.MAX_RING_ORDER) -> tuple[int, tuple[int, ...]]:
        """Copy ring_order and the data refs once (the guest may change the page later)."""
        order = self.load(IntfLayout.RING_ORDER)
        if order > max_order:
            raise RingError(msg=f"ring_order {order} above the maximum {max_order}")
        count = 1 << order
        if count > max_refs_in_intf_page(len(self.buf)):
            raise RingError(msg=f"ring_order {order}: {count} refs do not fit in the intf page")
        refs = struct.unpack_from(f"<{count}I", self.buf, IntfLayout.REF)
        self.ring_order = order
        self.refs = refs
        return order, refs

    def setup(self, order: int, refs: list[int] | tuple[int, ...]) -> None:
        """Frontend side: zero the indexes and write ring_order and the refs."""
        if len(refs) != 1 << order or len(refs) > max_refs_in_intf_page(len(self.buf)):
            raise ValueError(f"ring_order {order} needs {1 << order} refs, got {len(refs)}")
        for off in (IntfLayout.IN_CONS, IntfLayout.IN_PROD, IntfLayout.OUT_CONS, IntfLayout.OUT_PROD):
            self.store(off, 0)
        self.store(IntfLayout.RING_ORDER, order)
        struct.pack_into(f"<{len(refs)}I", self.buf, IntfLayout.REF, *refs)


def _halves(data: memoryview, order: int) -> tuple[int, memoryview, memoryview]:
    size = ring_size(order)
    if len(data) < 2 * size:
        raise ValueError(f"data area of {len(data)} bytes is smaller than 2 * {size}")
    return size, data[0:size], data[size:2 * size]


class BackendRing:
    """Our side of one ring: take requests from OUT, publish replies to IN.

    Our own indexes (out_cons, in_prod) live here; the copies in the page are only
    ever written by us. Requests are taken through a private read cursor that runs
    ahead of out_cons, so many can be in flight before any is consumed; the caller
    publishes out_cons (consume_to) when that is safe for crash recovery. Replies
    are written at a private reserve cursor and become visible only when published.
    """

    __slots__ = ("_iw", "_size", "_mask", "_in", "_out", "_out_cons", "_cursor",
                 "_in_prod", "_resv", "_limit", "_max_msize")

    def __init__(self, intf: memoryview, data: memoryview, order: int, max_msize: int,
                 *, out_cons: int | None = None, in_prod: int | None = None) -> None:
        """`out_cons`/`in_prod` resume a ring (crash recovery); default: what the page holds now."""
        if not 0 <= order <= IntfLayout.MAX_RING_ORDER:
            raise ValueError(f"ring_order {order} out of range")
        if len(intf) < IntfLayout.REF:
            raise ValueError("intf page too small")
        self._iw = _words(intf)
        self._size, self._in, self._out = _halves(data, order)
        self._mask = self._size - 1
        oc = self._iw[16] if out_cons is None else out_cons & _M32
        ip = self._iw[1] if in_prod is None else in_prod & _M32
        self._out_cons = self._cursor = oc
        self._in_prod = self._resv = ip
        self._max_msize = 0
        self._limit = 0
        self.max_msize = max_msize
        if out_cons is not None:
            self._iw[16] = oc
        if in_prod is not None:
            self._iw[1] = ip

    def release(self) -> None:
        """Drop this ring's views of the pages (a grant mapping cannot be unmapped while viewed)."""
        for v in (self._iw, self._in, self._out):
            v.release()

    # -- properties ---------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    @property
    def max_msize(self) -> int:
        return self._max_msize

    @max_msize.setter
    def max_msize(self, value: int) -> None:
        # Changes at Tversion; requests above min(msize, ring) are protocol errors.
        self._max_msize = value
        self._limit = min(value, self._size)

    @property
    def out_cons(self) -> int:
        return self._out_cons

    @property
    def read_cursor(self) -> int:
        """Index of the next request not yet taken (>= out_cons)."""
        return self._cursor

    @property
    def in_prod(self) -> int:
        return self._in_prod

    @property
    def reserved(self) -> int:
        """Index just past the last reply written (>= in_prod)."""
        return self._resv

    @property
    def in_half(self) -> memoryview:
        return self._in

    @property
    def out_half(self) -> memoryview:
        return self._out

    # -- requests (OUT half) ------------------------------------------------

    def _examine(self, cur: int) -> tuple[int, int] | None:
        prod = self._iw[17]
        cons = self._out_cons
        avail_all = (prod - cons) & _M32
        taken = (cur - cons) & _M32
        if avail_all > self._size:
            raise RingError(msg=f"out_prod {prod:#x} is {avail_all} bytes past out_cons {cons:#x}, ring holds {self._size}")
        if avail_all < taken:
            raise RingError(msg=f"out_prod {prod:#x} went back behind requests already taken")
        avail = avail_all - taken
        if avail < 4:
            return None
        pos = cur & self._mask
        if pos + 4 <= self._size:
            msize = _load(self._out, pos)[0]
        else:
            msize = _read_u32_wrapped(self._out, pos, self._size)
        if msize < HEADER_SIZE or msize > self._limit:
            raise RingError(msg=f"request size {msize} outside [{HEADER_SIZE}, {self._limit}]")
        if msize > avail:
            return None  # not all queued yet: wait, never latch a half request
        return cur, msize

    def peek_request(self, index: int | None = None) -> tuple[int, int] | None:
        """(index, size) of the whole request at `index` (default: the read cursor), or None."""
        return self._examine(self._cursor if index is None else index & _M32)

    def take_request(self) -> tuple[int, int] | None:
        """Like peek_request at the read cursor, and move the cursor past it."""
        r = self._examine(self._cursor)
        if r is not None:
            self._cursor = (r[0] + r[1]) & _M32
        return r

    def requests(self) -> Iterator[tuple[int, int]]:
        """Take every whole request queued now (the cursor advances; out_cons does not)."""
        take = self.take_request
        r = take()
        while r is not None:
            yield r
            r = take()

    def request_segments(self, index: int, size: int) -> list[memoryview]:
        """Views of the request bytes in ring memory (1 or 2 over the wrap); valid until consumed."""
        return segments_for(self._out, index, size, self._size)

    def copy_request(self, index: int, size: int) -> bytes:
        return _copy(self._out, index, size, self._size)

    def consume(self, size: int) -> None:
        """Advance out_cons by `size` and publish it (the read cursor follows if behind)."""
        new = (self._out_cons + size) & _M32
        if (new - self._out_cons) & _M32 > (self._cursor - self._out_cons) & _M32:
            self._cursor = new
        self._out_cons = new
        self._iw[16] = new

    def consume_to(self, index: int) -> None:
        """Publish out_cons = `index`, which must lie between out_cons and the read cursor."""
        index &= _M32
        if (index - self._out_cons) & _M32 > (self._cursor - self._out_cons) & _M32:
            raise ValueError(f"consume_to({index:#x}) past the read cursor {self._cursor:#x}")
        self._out_cons = index
        self._iw[16] = index

    def rewind(self) -> None:
        """Forget taken-but-unconsumed requests: the cursor goes back to out_cons."""
        self._cursor = self._out_cons

    def page_out_prod(self) -> int:
        """The guest's out_prod as the page holds it now (diagnostics)."""
        return self._iw[17]

    def page_in_cons(self) -> int:
        """The guest's in_cons as the page holds it now (diagnostics)."""
        return self._iw[0]

    # -- replies (IN half) --------------------------------------------------

    def reply_space(self) -> int:
        """Bytes free in IN after everything reserved so far."""
        cons = self._iw[0]
        used = (self._resv - cons) & _M32
        if used > self._size or (self._in_prod - cons) & _M32 > used:
            raise RingError(msg=f"in_cons {cons:#x} is not behind in_prod {self._in_prod:#x}")
        return self._size - used

    def reply_segments(self, size: int) -> list[memoryview]:
        """Write area for one reply of `size` bytes at the reserve cursor; NoRoom if it does not fit yet."""
        if size > self._size:
            raise ValueError(f"reply of {size} bytes can never fit a ring of {self._size}")
        if size > self.reply_space():
            raise NoRoom(f"{size} bytes")
        return segments_for(self._in, self._resv, size, self._size)

    def reserve_reply(self, size: int) -> list[memoryview]:
        """reply_segments, then move the reserve cursor past it (publish later, in order)."""
        segs = self.reply_segments(size)
        self._resv = (self._resv + size) & _M32
        return segs

    def publish(self) -> None:
        """Make every reserved reply visible: in_prod = reserve cursor."""
        self._in_prod = self._resv
        self._iw[1] = self._resv

    def publish_reply(self, size: int) -> None:
        """The reply of `size` bytes written via reply_segments is whole: publish it and all before it."""
        self._resv = (self._resv + size) & _M32
        self._in_prod = self._resv
        self._iw[1] = self._resv

    def write_reply(self, msg: bytes | memoryview) -> bool:
        """Copy one whole reply in and publish it; False if there is no room yet."""
        n = len(msg)
        if n > self._size:
            raise ValueError(f"reply of {n} bytes can never fit a ring of {self._size}")
        if n > self.reply_space():
            return False
        _write(self._in, self._resv, msg, self._size)
        self.publish_reply(n)
        return True


class FrontendRing:
    """The guest's mirror (tests, simulated guest, bench): whole requests out, whole replies in."""

    __slots__ = ("_iw", "_size", "_mask", "_in", "_out", "_out_prod", "_in_cons")

    def __init__(self, intf: memoryview, data: memoryview, order: int) -> None:
        self._iw = _words(intf)
        self._size, self._in, self._out = _halves(data, order)
        self._mask = self._size - 1
        self._out_prod = self._iw[17]
        self._in_cons = self._iw[0]

    def release(self) -> None:
        """Drop this ring's views of the pages."""
        for v in (self._iw, self._in, self._out):
            v.release()

    @property
    def size(self) -> int:
        return self._size

    @property
    def out_prod(self) -> int:
        return self._out_prod

    @property
    def in_cons(self) -> int:
        return self._in_cons

    def request_space(self) -> int:
        cons = self._iw[16]
        used = (self._out_prod - cons) & _M32
        if used > self._size:
            raise RingError(msg=f"out_cons {cons:#x} is not behind out_prod {self._out_prod:#x}")
        return self._size - used

    def write_request(self, msg: bytes | memoryview) -> bool:
        """Publish one whole request; False if there is no room yet (wait for the backend)."""
        n = len(msg)
        if n > self._size:
            raise ValueError(f"request of {n} bytes can never fit a ring of {self._size}")
        if n > self.request_space():
            return False
        _write(self._out, self._out_prod, msg, self._size)
        self._out_prod = (self._out_prod + n) & _M32
        self._iw[17] = self._out_prod
        return True

    def replies_queued(self) -> int:
        prod = self._iw[1]
        avail = (prod - self._in_cons) & _M32
        if avail > self._size:
            raise RingError(msg=f"in_prod {prod:#x} is {avail} bytes past in_cons, ring holds {self._size}")
        return avail

    def read_reply(self) -> bytes | None:
        """One whole reply, or None if none is wholly queued."""
        avail = self.replies_queued()
        if avail < 4:
            return None
        pos = self._in_cons & self._mask
        msize = _read_u32_wrapped(self._in, pos, self._size)
        if msize < HEADER_SIZE or msize > self._size:
            raise RingError(msg=f"reply size {msize} outside [{HEADER_SIZE}, {self._size}]")
        if msize > avail:
            return None
        data = _copy(self._in, self._in_cons, msize, self._size)
        self._in_cons = (self._in_cons + msize) & _M32
        self._iw[0] = self._in_cons
        return data
