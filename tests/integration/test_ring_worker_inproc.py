"""RingWorker in-process with a scripted session: what the worker hands the dispatcher and when.

Covers the wrapped-Twrite segment path and journal bookkeeping without worker processes.
"""
from __future__ import annotations

import threading

import pytest

from xen9p_common.p9 import messages as M

from .ring_worker_harness import Device, InprocWorker, StubSession
from tests.waiting import wait_for


class ScriptedSession(StubSession):
    """Answers Twrite with Rwrite(count) and everything else with Rlerror(EOPNOTSUPP)."""

    accepts_segments = True

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[str, bytes]] = []

    def submit(self, frame, reply, alloc=None, note=None) -> None:
        if isinstance(frame, list):
            raw = b"".join(bytes(v) for v in frame)
            self.frames.append(("segments", raw))
        else:
            raw = bytes(frame)
            self.frames.append(("flat", raw))
        msg = M.decode(raw)
        if isinstance(msg, M.Twrite):
            reply(M.encode(M.Rwrite(msg.tag, len(msg.data))))
        else:
            reply(M.encode(M.Rlerror(msg.tag, 95)))


@pytest.fixture
def inproc(tmp_path):
    d = Device(tmp_path, num_rings=1, order=0)
    session = ScriptedSession()
    iw = InprocWorker(d, session).run()
    yield d, iw.w, session
    assert iw.close() == 0
    d.close()


def test_wrapped_twrite_reaches_the_session_as_two_ring_views(inproc):
    d, w, session = inproc
    size = d.guest.size
    for n in range(200):  # sizes drift across the 2 KiB end many times
        payload = bytes([n % 251]) * (100 + n * 7 % 900)
        r = d.guest.rpc(M.Twrite(n % 7, 1, n, payload))
        assert isinstance(r, M.Rwrite) and r.count == len(payload)
    kinds = {k for k, _ in session.frames}
    assert kinds == {"flat", "segments"}
    for _, raw in session.frames:
        msg = M.decode(raw)  # whatever the path, the bytes the session saw are the request's
        assert msg.data == bytes([msg.offset % 251]) * (100 + msg.offset * 7 % 900)
    wait_for(lambda: d.ds.journal(0).records() == [], what="journal empty")
    assert w.ring.out_cons == d.guest.rings[0].fr.out_prod and size == 2048


def test_a_long_drain_frees_journal_slots_as_it_goes(tmp_path, caplog):
    """Requests answered during one drain pass are let past out_cons within that pass: a guest
    that keeps the ring busy never makes the worker stop taking for lack of journal slots."""
    d = Device(tmp_path, num_rings=1, order=0, journal_slots=4)
    session = ScriptedSession()
    iw = InprocWorker(d, session)
    w, r = iw.w, d.guest.rings[0]
    w._on_loop = threading.get_ident()  # this thread plays the loop: one drain, no wakeups
    try:
        for tag in range(40):  # 40 x 19 bytes: more than 4 journal slots' worth, all queued at once
            assert r.fr.write_request(M.encode(M.Tgetattr(tag, 1, 0x7FF)))
        with caplog.at_level("WARNING", logger="xen9p.ring"):
            w._drain()
        assert len(session.frames) == 40  # every one taken in the one pass
        assert not [rec for rec in caplog.records if "journal full" in rec.getMessage()]
        assert w.journal.free_slots() >= 4 - 3  # at most the last batch still behind out_cons
        w._advance()
        assert w.ring.out_cons == r.fr.out_prod and w.journal.free_slots() == 4
    finally:
        iw.close()
        d.close()
