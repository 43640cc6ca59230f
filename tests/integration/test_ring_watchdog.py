"""The ring worker's watchdog: a request left unanswered, a request queued but never taken and a
loop that stopped passing are each reported once, with where they wait, and re-armed when healthy."""
from __future__ import annotations

import threading
import time
import pytest

from xen9p_common.p9 import messages as M
from xen9p_worker.ring_worker import RingWorker
from xen9p_worker.watchdog import Watchdog

from .ring_worker_harness import Device, InprocWorker, StubSession
from tests.waiting import wait_for


class HoldingSession(StubSession):
    """Keeps every Tgetattr unanswered until release(); answers anything else at once."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[int, object] = {}

    def submit(self, frame, reply, alloc=None, note=None) -> None:
        msg = M.decode(bytes(frame))
        if isinstance(msg, M.Tgetattr):
            self.held[msg.tag] = reply
        else:
            reply(M.encode(M.Rlerror(msg.tag, 95)))

    def request_state(self, tag: int):
        return "running" if tag in self.held else None

    def release(self, tag: int) -> None:
        self.held.pop(tag)(M.encode(M.Rlerror(tag, 5)))


def _held(tmp_path, **kw):
    d = Device(tmp_path, num_rings=1, order=0, journal_slots=2)
    session = HoldingSession()
    iw = InprocWorker(d, session, **kw).run()
    return d, iw, session


@pytest.fixture
def held(tmp_path):
    d, iw, session = _held(tmp_path)
    yield d, iw.w, session
    iw.close()
    d.close()


@pytest.fixture
def held_on_fake_clock(tmp_path):
    """`held`, with the worker's loop and the test sharing one clock the test moves by hand."""
    now = [1000.0]
    d, iw, session = _held(tmp_path, clock=lambda: now[0])
    yield d, iw.w, session, now
    iw.close()
    d.close()


class Dumps:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


def _age(w: RingWorker, seconds: float) -> None:
    """Pretend every request in flight was taken `seconds` ago (no waiting in tests)."""
    for p in list(w._order):
        p.t0 -= int(seconds * 1e9)


def test_unanswered_request_is_reported_once_with_where_it_waits(held):
    d, w, session = held
    dumps = Dumps()
    dog = Watchdog(w, stall_after=30, dump=dumps)
    d.guest.send(M.encode(M.Tgetattr(3, 1, 0x7FF)))
    wait_for(lambda: 3 in session.held, what="the worker took the Tgetattr")
    assert dog.check() is None  # young: not a stall
    _age(w, 31)
    report = dog.check()
    assert "tag 3 Tgetattr" in report and "dispatcher: running" in report and "unanswered for 31s" in report
    assert "1 in flight" in report and "journal 1/2 free" in report
    assert dumps.n == 1
    assert dog.check() is None and dumps.n == 1  # once per incident
    session.release(3)
    assert isinstance(d.guest.take(3), bytes)
    wait_for(lambda: not w._order, what="out_cons passed the answered request")
    assert dog.check() is None
    d.guest.send(M.encode(M.Tgetattr(4, 1, 0x7FF)))
    wait_for(lambda: 4 in session.held, what="the second Tgetattr taken")
    _age(w, 40)
    assert "tag 4 Tgetattr" in dog.check() and dumps.n == 2  # re-armed after recovery
    session.release(4)
    d.guest.take(4)


def test_requests_queued_but_never_taken_are_reported(held_on_fake_clock):
    # The loop stamps its passes with the same clock as the watchdog's, so the loop's own
    # liveness is judged on the time the test sets, never on how fast this machine runs.
    d, w, session, now = held_on_fake_clock
    dumps = Dumps()
    dog = Watchdog(w, stall_after=30, clock=lambda: now[0], dump=dumps)
    for tag in (1, 2, 3):  # a journal of 2 slots: the third request stays on the ring
        d.guest.send(M.encode(M.Tgetattr(tag, 1, 0x7FF)))
    wait_for(lambda: len(session.held) == 2, what="two requests taken")
    wait_for(lambda: w.ring.page_out_prod() != w.ring.read_cursor, what="the third queued")
    assert dog.check() is None  # first sight of the queued bytes
    now[0] += 31
    report = dog.check()
    assert "19 bytes queued past the read cursor" in report and "not taken for 31s" in report
    assert "journal 0/2 free" in report and dumps.n == 1
    for tag in (1, 2):
        session.release(tag)
    wait_for(lambda: 3 in session.held, what="the third taken once slots were freed")
    wait_for(lambda: w._pass_at == now[0], what="the loop passed after taking it")
    assert dog.check() is None
    session.release(3)


def test_a_loop_that_stopped_passing_is_reported(held):
    d, w, session = held
    dumps = Dumps()
    dog = Watchdog(w, stall_after=30, clock=lambda: w._pass_at + 45, dump=dumps)
    assert "the loop thread has not passed for 45s" in dog.check() and dumps.n == 1


def test_watchdog_rejects_nonsense_and_survives_a_failing_check():
    with pytest.raises(ValueError):
        Watchdog(object(), stall_after=0)

    calls = []
    twice = threading.Event()

    class Worker:
        name = "broken"

    def broken_probe(now):
        calls.append(now)
        if len(calls) >= 2:
            twice.set()
        raise RuntimeError("boom")

    dog = Watchdog(Worker(), stall_after=1, period=0.01, probe=broken_probe)
    dog.start()
    assert twice.wait(10), "the watchdog thread died on the first failing check"
    dog.stop()
    assert not dog._thread.is_alive()


def test_heartbeats_go_on_when_the_clock_steps_back(tmp_path):
    """Seen under a nested Xen dom0: time.monotonic() stepped 141 s back. The loop's deadlines
    must not then lie in the future: heartbeats (and the periodic drain) keep their pace."""
    d = Device(tmp_path, num_rings=1, order=0)
    offset = [0.0]
    iw = InprocWorker(d, HoldingSession(), heartbeat=0.05, stats_every=0.1,
                      clock=lambda: time.monotonic() + offset[0])
    beats = []
    iw.w.send = lambda mtype, **f: beats.append(mtype)
    iw.run()
    try:
        wait_for(lambda: beats.count("heartbeat") >= 2, what="first heartbeats")
        offset[0] = -1000.0
        n = beats.count("heartbeat")
        wait_for(lambda: beats.count("heartbeat") >= n + 3, timeout=5, what="heartbeats after the step back")
    finally:
        iw.close()
        d.close()
