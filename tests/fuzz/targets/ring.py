"""The ring engine (BackendRing) against a guest that writes anything, anywhere, at any moment.

The guest sets every index to any value, writes any bytes into the request half, tears requests
(size header queued before the body), and rewrites request bytes between the moment the backend
latched a request's size and the moment it decodes them (tests/fuzz/test_ring_race.py does the same
from another thread, at any point of the decode). The backend side makes
only calls the ring worker makes.

Properties: only RingError / NoRoom escape; a taken request lies within [7, limit] bytes and within
what the guest queued; the backend never writes the request half, writes replies only between its
reserve cursor and where it moves it, and the page's out_cons / in_prod always equal its own; a
request decodes or raises DecodeError, however its bytes changed after it was taken.
"""
from __future__ import annotations

from xen9p_common.errors import DecodeError, RingError
from xen9p_common.p9 import messages as M
from xen9p_common.ring import BackendRing, IntfLayout, NoRoom, ring_size

from ..draw import Draw

M32 = 0xFFFFFFFF


class Guest:
    """The guest's view: raw pokes into the intf page and the request half."""

    def __init__(self, intf: bytearray, data: bytearray, size: int) -> None:
        self.intf, self.data, self.size = intf, data, size

    def set(self, off: int, v: int) -> None:
        self.intf[off:off + 4] = (v & M32).to_bytes(4, "little")

    def get(self, off: int) -> int:
        return int.from_bytes(self.intf[off:off + 4], "little")

    def poke_out(self, index: int, raw: bytes) -> None:
        """Write raw bytes into the request half at ring index `index` (wrapping)."""
        raw = raw[: self.size]
        pos = index & (self.size - 1)
        first = raw[: self.size - pos]
        self.data[self.size + pos:self.size + pos + len(first)] = first
        rest = raw[len(first):]
        self.data[self.size:self.size + len(rest)] = rest

    def queue(self, d: Draw, frame: bytes, torn: bool) -> None:
        """Put a frame at out_prod and publish it (or only its first bytes: a torn request)."""
        prod = self.get(IntfLayout.OUT_PROD)
        self.poke_out(prod, frame)
        n = len(frame) if not torn else d.below(len(frame) + 1)
        self.set(IntfLayout.OUT_PROD, prod + n)


def _frame(d: Draw) -> bytes:
    body = d.blob(d.pick((8, 40, 300, 5000)))
    size = len(body) + 7 if d.chance(200) else d.int_of(4)
    return size.to_bytes(4, "little") + bytes([d.uint(1)]) + d.bytes(2).ljust(2, b"\0") + body


def one_input(data: bytes) -> None:
    d = Draw(data)
    order = d.below(2)
    size = ring_size(order)
    intf, ring_data = bytearray(IntfLayout.PAGE_SIZE), bytearray(2 * size)
    g = Guest(intf, ring_data, size)
    for off in (IntfLayout.IN_CONS, IntfLayout.IN_PROD, IntfLayout.OUT_CONS, IntfLayout.OUT_PROD):
        g.set(off, d.int_of(4) if d.chance(64) else d.pick((0, M32 - 10, 1 << 31)))
    g.set(IntfLayout.OUT_PROD, g.get(IntfLayout.OUT_CONS) if d.flag() else g.get(IntfLayout.OUT_PROD))
    g.set(IntfLayout.IN_CONS, g.get(IntfLayout.IN_PROD) if d.flag() else g.get(IntfLayout.IN_CONS))
    resume = d.chance(64)
    ring = BackendRing(memoryview(intf), memoryview(ring_data), order, d.pick((0, 7, 64, 4096, 8192, 1 << 20)),
                       out_cons=d.int_of(4) if resume else None, in_prod=d.int_of(4) if resume else None)
    limit = min(ring.max_msize, size)
    for _ in range(d.below(32)):
        op = d.below(12)
        try:
            if op == 0:
                g.queue(d, _frame(d), torn=d.chance(48))
            elif op == 1:
                g.set(IntfLayout.OUT_PROD, d.int_of(4) if d.flag() else g.get(IntfLayout.OUT_PROD) + d.below(64))
            elif op == 2:
                g.set(IntfLayout.IN_CONS, d.int_of(4) if d.flag() else g.get(IntfLayout.IN_CONS) + d.below(512))
            elif op == 3:
                g.poke_out(d.int_of(4), d.blob(16))
            elif op in (4, 5, 6):
                _take(d, g, ring, limit)
            elif op == 7:
                span = (ring.read_cursor - ring.out_cons) & M32
                _backend(g, lambda: ring.consume_to(ring.out_cons + d.below(span + 1)))
            elif op == 8:
                n = d.between(7, size)
                reply = n.to_bytes(4, "little") + bytes([d.uint(1)]) * (n - 4)
                _backend(g, lambda: ring.write_reply(reply), ring=ring, reply_len=n)
            elif op == 9:
                n = d.between(7, size)
                _backend(g, lambda: _reserve(ring, n), ring=ring, reply_len=n)
            elif op == 10:
                _backend(g, ring.publish)
            else:
                ring.rewind()
                ring.max_msize = d.pick((0, 7, 4096, 1 << 20))
                limit = min(ring.max_msize, size)
        except (RingError, NoRoom):
            pass
        assert g.get(IntfLayout.OUT_CONS) == ring.out_cons, "page out_cons differs from the ring's"
        assert g.get(IntfLayout.IN_PROD) == ring.in_prod, "page in_prod differs from the ring's"
        assert (ring.read_cursor - ring.out_cons) & M32 <= size, "read cursor ran a ring ahead of out_cons"
    ring.release()


def _reserve(ring: BackendRing, n: int) -> None:
    for seg in ring.reserve_reply(n):
        seg[:] = b"\xaa" * len(seg)


def _backend(g: Guest, call, ring: BackendRing | None = None, reply_len: int = 0):
    """Run one backend call; check it wrote nothing but the reply area it owns."""
    size = g.size
    out_before = bytes(g.data[size:])
    in_before = bytearray(g.data[:size])
    resv = ring.reserved if ring is not None else 0
    wrote = False
    try:
        wrote = call()
    finally:
        assert bytes(g.data[size:]) == out_before, "the backend wrote into the request half"
        in_after = g.data[:size]
        if ring is None or (ring.reserved == resv and not wrote):
            assert in_after == in_before, "the backend wrote into the reply half without reserving"
        else:
            for i in range(reply_len):  # the owned area: reply_len bytes from the old reserve cursor
                in_before[(resv + i) & (size - 1)] = in_after[(resv + i) & (size - 1)]
            assert in_after == in_before, "the backend wrote outside the reply it reserved"


def _take(d: Draw, g: Guest, ring: BackendRing, limit: int) -> None:
    before = ring.read_cursor
    queued = (g.get(IntfLayout.OUT_PROD) - before) & M32
    r = ring.take_request()
    if r is None:
        return
    index, n = r
    assert index == before and ring.read_cursor == (before + n) & M32, "take_request moved the cursor wrongly"
    assert 7 <= n <= limit, f"took a request of {n} bytes, limit {limit}"
    assert n <= queued, f"took {n} bytes but only {queued} were queued"
    if d.flag():  # the guest rewrites the request (size header included) after we latched its size
        g.poke_out(index + d.below(n), d.blob(n))
    segs = ring.request_segments(index, n)
    assert sum(len(s) for s in segs) == n
    frame = segs[0] if len(segs) == 1 else bytes(segs[0]) + bytes(segs[1])
    if d.flag():  # ... or after we made the views the decoder reads through
        g.poke_out(index + d.below(n), d.blob(8))
    try:
        M.decode(frame)
    except DecodeError:
        pass
    assert len(ring.copy_request(index, n)) == n
