"""A guest rewriting request bytes from another thread while the backend takes and decodes them.

The fuzz target interleaves at fixed points; here the switch interval is made tiny so the guest's
writes land at any point of take_request / decode. Only RingError and DecodeError may come out.
"""
from __future__ import annotations

import random
import sys
import threading

from xen9p_common.errors import DecodeError, RingError
from xen9p_common.p9 import messages as M
from xen9p_common.ring import BackendRing, FrontendRing, IntfLayout, ring_size

ROUNDS = 3000
MAX_ROUNDS = 300_000


def test_request_bytes_changing_under_the_backend_only_give_ring_or_decode_errors():
    order = 0
    size = ring_size(order)
    intf, data = bytearray(IntfLayout.PAGE_SIZE), bytearray(2 * size)
    fe = FrontendRing(memoryview(intf), memoryview(data), order)
    be = BackendRing(memoryview(intf), memoryview(data), order, 8192)
    stop = threading.Event()
    writing = threading.Event()

    def guest() -> None:
        g = random.Random(8)
        out = memoryview(data)[size:]
        while not stop.is_set():
            pos = g.randrange(size)
            out[pos] = g.randrange(256)
            writing.set()

    frame = M.encode(M.Twalk(1, 0, 1, ("a", "b", "c")))
    t = threading.Thread(target=guest, daemon=True)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    t.start()
    assert writing.wait(10), "the guest thread never ran"
    outcomes = {"decoded": 0, "DecodeError": 0, "RingError": 0}
    rounds = 0
    try:
        # At least ROUNDS, and on until a guest write has landed mid-request (the interleaving is
        # the scheduler's: on a loaded machine 3000 rounds were once not enough), within a bound.
        while rounds < ROUNDS or (outcomes["DecodeError"] + outcomes["RingError"] == 0 and rounds < MAX_ROUNDS):
            rounds += 1
            try:
                if not fe.write_request(frame):
                    be.consume_to(be.read_cursor)
                    continue
                r = be.take_request()
                if r is None:
                    be.rewind()
                    continue
                segs = be.request_segments(*r)
                buf = segs[0] if len(segs) == 1 else bytes(segs[0]) + bytes(segs[1])
                M.decode(buf)
                outcomes["decoded"] += 1
            except DecodeError:
                outcomes["DecodeError"] += 1
            except RingError:
                outcomes["RingError"] += 1
                # A guest that corrupted its ring: start over, as a new connection would.
                for off in (0, 4, 64, 68):
                    intf[off:off + 4] = bytes(4)
                fe = FrontendRing(memoryview(intf), memoryview(data), order)
                be = BackendRing(memoryview(intf), memoryview(data), order, 8192)
            be.consume_to(be.read_cursor)
    finally:
        stop.set()
        sys.setswitchinterval(old)
        t.join(10)
    assert sum(outcomes.values()) > rounds // 2, outcomes
    assert outcomes["DecodeError"] + outcomes["RingError"] > 0, f"the guest's writes never landed: {outcomes}"
