"""The flex ring engine against a model: queued math, wrap-around everywhere, validation.

Backend and frontend share one bytearray pair, as the guest and dom0 share granted pages.
"""
from __future__ import annotations

import struct
from collections import deque

import pytest
from hypothesis import given, settings, strategies as st

from xen9p_common.errors import RingError, Xen9pError
from xen9p_common.ring import (
    BackendRing, FrontendRing, Intf, IntfLayout, NoRoom, max_refs_in_intf_page, queued,
    ring_size, segments_for,
)

ORDERS = (0, 1, 6, 9)
M32 = 0xFFFFFFFF


def make(order: int, max_msize: int | None = None, start: int = 0):
    """A fresh ring whose four indexes all start at `start` (free-running, any u32)."""
    intf = memoryview(bytearray(IntfLayout.PAGE_SIZE))
    data = memoryview(bytearray(2 * ring_size(order)))
    Intf(intf).setup(order, list(range(8, 8 + (1 << order))))
    for off in (IntfLayout.IN_CONS, IntfLayout.IN_PROD, IntfLayout.OUT_CONS, IntfLayout.OUT_PROD):
        struct.pack_into("<I", intf, off, start & M32)
    be = BackendRing(intf, data, order, max_msize if max_msize is not None else ring_size(order))
    fe = FrontendRing(intf, data, order)
    return intf, data, be, fe


def message(size: int, tag: int) -> bytes:
    """A 9P-shaped frame of exactly `size` bytes whose body identifies it."""
    body = bytes((tag + i) & 0xFF for i in range(size - 7))
    return struct.pack("<IBH", size, 100 + (tag & 1), tag & 0xFFFF) + body


def set_idx(intf, off, value):
    struct.pack_into("<I", intf, off, value & M32)


# -- layout and math ---------------------------------------------------------

def test_layout_constants():
    assert (IntfLayout.IN_CONS, IntfLayout.IN_PROD, IntfLayout.OUT_CONS, IntfLayout.OUT_PROD) == (0, 4, 64, 68)
    assert (IntfLayout.RING_ORDER, IntfLayout.REF) == (128, 132)
    assert ring_size(0) == 2048 and ring_size(9) == 1 << 20
    assert max_refs_in_intf_page() == 991
    assert (1 << IntfLayout.MAX_RING_ORDER) <= max_refs_in_intf_page() < (1 << (IntfLayout.MAX_RING_ORDER + 1))


def model_queued(prod: int, cons: int, size: int) -> int:
    if prod == cons:
        return 0
    d = ((prod % size) - (cons % size)) % size
    return size if d == 0 else d


@given(st.sampled_from(ORDERS), st.integers(0, M32), st.integers(0, M32))
def test_queued_matches_model(order, prod, cons):
    size = ring_size(order)
    assert queued(prod, cons, size) == model_queued(prod, cons, size)


@given(st.sampled_from(ORDERS), st.integers(0, M32), st.data())
def test_queued_is_exact_when_indexes_are_sane(order, cons, data):
    size = ring_size(order)
    n = data.draw(st.integers(0, size))
    assert queued((cons + n) & M32, cons, size) == n


def test_queued_ambiguity_cases():
    assert queued(5, 5, 2048) == 0
    assert queued(2048 + 5, 5, 2048) == 2048
    assert queued(3, 0xFFFFFFFF, 2048) == 4


@given(st.sampled_from(ORDERS), st.integers(0, M32), st.data())
def test_segments_cover_exactly(order, start, data):
    size = ring_size(order)
    length = data.draw(st.integers(0, size))
    buf = memoryview(bytes(i & 0xFF for i in range(size)) if order < 6 else bytearray(range(256)) * (size // 256))
    segs = segments_for(buf, start, length, size)
    assert 1 <= len(segs) <= 2
    joined = b"".join(bytes(s) for s in segs)
    expect = bytes(buf[(start + i) % size] for i in range(length)) if length < 5000 else None
    assert len(joined) == length
    if expect is not None:
        assert joined == expect
    assert len(segs) == 2 or (start % size) + length <= size


# -- intf page ---------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
def test_read_refs_round_trip(order):
    intf = memoryview(bytearray(4096))
    refs = [100 + i for i in range(1 << order)]
    Intf(intf).setup(order, refs)
    got_order, got = Intf(intf).read_refs()
    assert got_order == order and list(got) == refs


def test_read_refs_is_a_copy():
    buf = bytearray(4096)
    i = Intf(memoryview(buf))
    i.setup(1, [7, 8])
    order, refs = i.read_refs()
    struct.pack_into("<I", buf, IntfLayout.RING_ORDER, 9)
    struct.pack_into("<I", buf, IntfLayout.REF, 99)
    assert (order, refs) == (1, (7, 8)) and (i.ring_order, i.refs) == (1, (7, 8))


@pytest.mark.parametrize("bad", [10, 11, 0xFFFFFFFF])
def test_read_refs_rejects_orders_that_do_not_fit(bad):
    buf = bytearray(4096)
    struct.pack_into("<I", buf, IntfLayout.RING_ORDER, bad)
    with pytest.raises(RingError):
        Intf(memoryview(buf)).read_refs()


def test_read_refs_respects_advertised_max():
    buf = bytearray(4096)
    Intf(memoryview(buf)).setup(6, list(range(64)))
    with pytest.raises(RingError):
        Intf(memoryview(buf)).read_refs(max_order=5)


def test_index_loads_and_stores():
    i = Intf(memoryview(bytearray(4096)))
    for off, value in ((0, 1), (4, 2), (64, 3), (68, 0xFFFFFFFF)):
        i.store(off, value)
    assert (i.in_cons(), i.in_prod(), i.out_cons(), i.out_prod()) == (1, 2, 3, 0xFFFFFFFF)


def test_ring_error_is_a_xen9p_error():
    assert issubclass(RingError, Xen9pError) and issubclass(NoRoom, Xen9pError)


# -- whole messages at every offset class ------------------------------------

@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("back", range(0, 9))
def test_header_straddles_the_wrap(order, back):
    """Messages start `back` bytes before the ring's end, at free-running indexes near 2**32."""
    size = ring_size(order)
    pos = (size - back) % size
    _, _, be, fe = make(order, start=(1 << 32) - size + pos)
    req = message(40, 0x1234)
    assert fe.write_request(req)
    idx, n = be.take_request()
    assert n == 40 and be.copy_request(idx, n) == req
    assert b"".join(bytes(s) for s in be.request_segments(idx, n)) == req
    assert len(be.request_segments(idx, n)) == (2 if back else 1)
    be.consume_to(be.read_cursor)
    assert be.out_cons == (idx + 40) & M32 < 1 << 32
    rep = message(33, 0x4321)
    assert be.write_reply(rep)
    assert fe.read_reply() == rep
    assert be.take_request() is None and fe.read_reply() is None


@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_round_trip_random_sizes_any_start(order, data):
    size = ring_size(order)
    start = data.draw(st.integers(0, M32), label="start")
    intf, _, be, fe = make(order, start=start)
    sizes = data.draw(st.lists(st.integers(7, min(size, 3000)), min_size=1, max_size=12), label="sizes")
    for k, n in enumerate(sizes):
        req = message(n, k)
        assert fe.write_request(req)
        got = be.take_request()
        assert got is not None and got[1] == n
        assert be.copy_request(*got) == req
        be.consume(n)
        rep = message(max(7, n // 2), k + 1000)
        assert be.write_reply(rep)
        assert fe.read_reply() == rep
    assert be.take_request() is None and fe.read_reply() is None


@pytest.mark.parametrize("order", [0, 1])
def test_full_ring_exactly(order):
    size = ring_size(order)
    intf, _, be, fe = make(order, start=12345)
    req = message(size, 1)
    assert fe.write_request(req)
    assert fe.request_space() == 0 and not fe.write_request(message(7, 2))
    idx, n = be.take_request()
    assert n == size and be.copy_request(idx, n) == req
    be.consume(n)
    assert fe.request_space() == size
    rep = message(size, 3)
    assert be.reply_space() == size and be.write_reply(rep)
    assert be.reply_space() == 0 and not be.write_reply(message(7, 4))
    with pytest.raises(NoRoom):
        be.reply_segments(7)
    assert fe.read_reply() == rep


# -- random interleavings against a model queue ------------------------------

OPS = st.sampled_from(["send", "send", "take", "consume", "reply", "reply", "recv", "publish"])


@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_interleavings(order, data):
    size = ring_size(order)
    start = data.draw(st.sampled_from([0, size - 3, M32 - 20, data.draw(st.integers(0, M32))]), label="start")
    _, _, be, fe = make(order, start=start)
    big = min(size, 4096)
    sent: deque[bytes] = deque()        # written by the frontend, not yet taken
    taken: deque[tuple[int, int, bytes]] = deque()  # taken, not consumed
    staged: deque[bytes] = deque()      # replies reserved but not published
    replies: deque[bytes] = deque()     # published, not read
    out_used = 0
    in_used = 0
    k = 0
    for op in data.draw(st.lists(OPS, max_size=60), label="ops"):
        k += 1
        if op == "send":
            n = data.draw(st.integers(7, big))
            msg = message(n, k)
            ok = fe.write_request(msg)
            assert ok == (out_used + n <= size)
            if ok:
                sent.append(msg)
                out_used += n
        elif op == "take":
            got = be.take_request()
            if not sent:
                assert got is None
            else:
                msg = sent.popleft()
                assert got is not None and got[1] == len(msg) and be.copy_request(*got) == msg
                taken.append((got[0], got[1], msg))
        elif op == "consume" and taken:
            j = data.draw(st.integers(1, len(taken)))
            for _ in range(j):
                idx, n, msg = taken.popleft()
                assert be.copy_request(idx, n) == msg  # still intact until consumed
                out_used -= n
            be.consume_to((idx + n) & M32)
            assert be.out_cons == (idx + n) & M32
        elif op == "reply":
            n = data.draw(st.integers(7, big))
            msg = message(n, k + 5000)
            fits = in_used + n <= size
            assert (be.reply_space() >= n) == fits
            if fits:
                segs = be.reserve_reply(n)
                pos = 0
                for s in segs:
                    s[:] = msg[pos:pos + len(s)]
                    pos += len(s)
                staged.append(msg)
                in_used += n
            else:
                with pytest.raises(NoRoom):
                    be.reply_segments(n)
        elif op == "publish":
            be.publish()
            replies.extend(staged)
            staged.clear()
        elif op == "recv":
            got = fe.read_reply()
            if replies:
                msg = replies.popleft()
                assert got == msg
                in_used -= len(msg)
            else:
                assert got is None  # reserved-but-unpublished replies are invisible
        assert fe.request_space() == size - out_used
        assert be.reply_space() == size - in_used


def test_many_requests_in_flight_before_any_answer():
    _, _, be, fe = make(1, start=0)
    msgs = [message(20 + i, i) for i in range(50)]
    for m in msgs:
        assert fe.write_request(m)
    got = list(be.requests())
    assert [be.copy_request(*g) for g in got] == msgs
    assert be.out_cons == 0 and be.read_cursor == sum(map(len, msgs))
    assert fe.request_space() == ring_size(1) - sum(map(len, msgs))
    be.consume_to(got[9][0] + got[9][1])
    assert fe.request_space() == ring_size(1) - sum(map(len, msgs[10:]))
    with pytest.raises(ValueError):
        be.consume_to(be.read_cursor + 1)


def test_peek_does_not_advance_and_peek_at_index():
    _, _, be, fe = make(0)
    a, b = message(10, 1), message(12, 2)
    fe.write_request(a)
    fe.write_request(b)
    assert be.peek_request() == (0, 10) == be.peek_request()
    assert be.peek_request(10) == (10, 12)
    assert be.take_request() == (0, 10)
    assert be.peek_request() == (10, 12)
    be.consume(10)
    be.consume(12)  # consume without taking moves the cursor along
    assert be.read_cursor == 22 and be.take_request() is None


def test_rewind_returns_taken_requests():
    _, _, be, fe = make(0)
    fe.write_request(message(10, 1))
    fe.write_request(message(11, 2))
    assert len(list(be.requests())) == 2
    be.rewind()
    assert [n for _, n in be.requests()] == [10, 11]


def test_partial_request_is_not_taken():
    intf, data, be, fe = make(0)
    msg = message(100, 1)
    out = data[ring_size(0):]
    out[0:50] = msg[:50]
    set_idx(intf, IntfLayout.OUT_PROD, 50)
    assert be.take_request() is None and be.read_cursor == 0
    out[50:100] = msg[50:]
    set_idx(intf, IntfLayout.OUT_PROD, 100)
    assert be.take_request() == (0, 100)


def test_partial_header_is_not_taken():
    intf, data, be, _ = make(0)
    data[ring_size(0):ring_size(0) + 3] = b"\x0a\x00\x00"
    set_idx(intf, IntfLayout.OUT_PROD, 3)
    assert be.take_request() is None


def test_resume_from_recorded_indexes():
    """A replacement worker starts from the indexes it recorded, not the page's copies."""
    intf, data, be, fe = make(0)
    fe.write_request(message(10, 1))
    fe.write_request(message(12, 2))
    set_idx(intf, IntfLayout.OUT_CONS, 999)  # the guest scribbles on our index
    be2 = BackendRing(intf, data, 0, 4096, out_cons=10, in_prod=0)
    assert Intf(intf).out_cons() == 10
    assert be2.take_request() == (10, 12)


# -- validation: the guest is the adversary ----------------------------------

@pytest.mark.parametrize("bad_size", [0, 1, 6])
def test_request_size_below_header(bad_size):
    intf, data, be, _ = make(0)
    struct.pack_into("<I", data, ring_size(0), bad_size)
    set_idx(intf, IntfLayout.OUT_PROD, 7)
    with pytest.raises(RingError):
        be.take_request()


@pytest.mark.parametrize("order", [0, 1])
def test_request_size_above_ring(order):
    intf, data, be, _ = make(order, max_msize=1 << 30)
    struct.pack_into("<I", data, ring_size(order), ring_size(order) + 1)
    set_idx(intf, IntfLayout.OUT_PROD, 8)
    with pytest.raises(RingError):
        be.take_request()  # raised at once, never waits for bytes that cannot come


def test_request_size_above_msize():
    intf, data, be, _ = make(1, max_msize=1000)
    struct.pack_into("<I", data, ring_size(1), 1001)
    set_idx(intf, IntfLayout.OUT_PROD, 1001)
    with pytest.raises(RingError):
        be.take_request()
    be.max_msize = 2000
    assert be.take_request() == (0, 1001)


@pytest.mark.parametrize("prod", [ring_size(0) + 1, 0x80000000, M32])
def test_out_prod_beyond_ring(prod):
    intf, data, be, _ = make(0)
    struct.pack_into("<I", data, ring_size(0), 7)
    set_idx(intf, IntfLayout.OUT_PROD, prod)
    with pytest.raises(RingError):
        be.take_request()


def test_out_prod_going_back_behind_taken():
    intf, _, be, fe = make(0)
    fe.write_request(message(30, 1))
    assert be.take_request() == (0, 30)
    set_idx(intf, IntfLayout.OUT_PROD, 10)
    with pytest.raises(RingError):
        be.take_request()


@pytest.mark.parametrize("cons", [5, ring_size(0) + 1, 0x80000000])
def test_in_cons_beyond_in_prod(cons):
    intf, _, be, _ = make(0)
    set_idx(intf, IntfLayout.IN_CONS, cons)
    with pytest.raises(RingError):
        be.reply_space()
    with pytest.raises(RingError):
        be.write_reply(message(7, 1))


def test_in_cons_into_unpublished_replies():
    intf, _, be, _ = make(0)
    be.reserve_reply(20)
    set_idx(intf, IntfLayout.IN_CONS, 10)
    with pytest.raises(RingError):
        be.reply_space()


def test_frontend_validates_backend_indexes():
    intf, data, be, fe = make(0)
    set_idx(intf, IntfLayout.IN_PROD, ring_size(0) + 1)
    with pytest.raises(RingError):
        fe.read_reply()
    set_idx(intf, IntfLayout.IN_PROD, 4)
    struct.pack_into("<I", data, 0, 3)
    with pytest.raises(RingError):
        fe.read_reply()
    set_idx(intf, IntfLayout.OUT_CONS, 1)
    with pytest.raises(RingError):
        fe.request_space()


def test_oversized_messages_are_caller_errors():
    _, _, be, fe = make(0)
    with pytest.raises(ValueError):
        fe.write_request(bytes(ring_size(0) + 1))
    with pytest.raises(ValueError):
        be.write_reply(bytes(ring_size(0) + 1))
    with pytest.raises(ValueError):
        be.reply_segments(ring_size(0) + 1)


def test_constructor_checks():
    with pytest.raises(ValueError):
        BackendRing(memoryview(bytearray(4096)), memoryview(bytearray(100)), 0, 4096)
    with pytest.raises(ValueError):
        BackendRing(memoryview(bytearray(4096)), memoryview(bytearray(1 << 22)), 10, 4096)
