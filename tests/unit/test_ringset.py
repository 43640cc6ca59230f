"""RingSet (xen9pd's worker supervision) with fake processes and a fake clock: crash, backoff, heartbeat
and ready timeouts, FATAL, stop and SIGKILL of a straggler, operator restart."""
from __future__ import annotations

import signal

import pytest

from xen9p_common import control
from xen9p_common.control import RingSpec
from xen9p_supervisor.restart import ExitCause, RestartPolicy, RunState
from xen9p_supervisor.workers import CpuAllocator, RingSet, SpawnError
from tests.supervisor_fakes import KILLED, FakeClock, FakeLauncher

POLICY = RestartPolicy(startsecs=2.0, startretries=2, backoff_initial=0.5, backoff_max=4.0)
HEARTBEAT, READY, GRACE = 10.0, 5.0, 1.0


def _specs(n: int) -> list[RingSpec]:
    return [RingSpec(3, 0, i, 100 + i, 10 + i, "seg", "/srv", "none", "ipc:///x") for i in range(n)]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def launcher(clock):
    return FakeLauncher(clock)


def _ringset(launcher, clock, n: int = 2) -> RingSet:
    return RingSet(_specs(n), launcher=launcher, cpus=CpuAllocator([4, 5]), policy=POLICY,
                   heartbeat_timeout=HEARTBEAT, ready_timeout=READY, kill_grace=GRACE, clock=clock)


def _ready(rs: RingSet, r) -> str | None:
    return rs.on_message(r, {"type": control.W_READY, "pid": r.proc.pid})


def _running(launcher, clock, n: int = 2) -> RingSet:
    rs = _ringset(launcher, clock, n)
    rs.start()
    for r in rs.rings:
        assert _ready(rs, r) == "ready"
    return rs


def test_start_pins_rings_round_robin_and_ready_makes_them_running(launcher, clock):
    rs = _ringset(launcher, clock)
    rs.start()
    assert [cpu for _, cpu, _ in launcher.spawned] == [4, 5]
    assert [s.ring for s, _, _ in launcher.spawned] == [0, 1]
    assert not rs.all_running()
    assert _ready(rs, rs.rings[0]) == "ready"
    assert _ready(rs, rs.rings[0]) is None  # a repeated ready changes nothing
    assert not rs.all_running()
    assert _ready(rs, rs.rings[1]) == "ready" and rs.all_running()


def test_a_late_message_from_a_previous_process_is_ignored(launcher, clock):
    rs = _running(launcher, clock, 1)
    r = rs.rings[0]
    old = r.proc
    old.exit(1)
    clock.advance(POLICY.startsecs + 1)
    rs.tick()                                    # reaped: BACKOFF
    clock.advance(POLICY.backoff_initial)
    assert rs.tick() == [(r, "respawned")]
    assert rs.on_message(r, {"type": control.W_READY, "pid": old.pid}) is None
    assert r.state is RunState.STARTING


def test_crash_backs_off_then_respawns_with_doubling_delays(launcher, clock):
    rs = _running(launcher, clock, 1)
    r = rs.rings[0]
    clock.advance(POLICY.startsecs + 1)          # served a while: the first crash is not a quick failure
    r.proc.exit(-int(signal.SIGSEGV))
    assert rs.tick() == []
    assert r.state is RunState.BACKOFF and r.restarter.last_exit == (ExitCause.CRASH, -int(signal.SIGSEGV))
    assert rs.next_deadline() == clock() + POLICY.backoff_initial
    clock.advance(POLICY.backoff_initial - 0.01)
    assert rs.tick() == [] and len(launcher.procs()) == 1       # not due yet
    clock.advance(0.01)
    assert rs.tick() == [(r, "respawned")] and len(launcher.procs()) == 2
    assert r.state is RunState.STARTING and r.restarter.restarts == 1
    r.proc.exit(1)                                # a quick failure: the delay doubles
    rs.tick()
    assert r.restarter.respawn_at == clock() + 2 * POLICY.backoff_initial


def test_quick_failures_past_startretries_are_fatal(launcher, clock):
    rs = _ringset(launcher, clock, 1)
    rs.start()
    r = rs.rings[0]
    events = []
    for _ in range(POLICY.startretries + 1):
        r.proc.exit(3)
        events += rs.tick()
        clock.advance(POLICY.backoff_max)
        events += rs.tick()
    assert events[-1] == (r, "fatal")
    assert r.state is RunState.FATAL
    assert f"failed {POLICY.startretries + 1} times in a row" in r.fatal_reason
    assert "status 3" in r.fatal_reason
    assert len(launcher.procs()) == POLICY.startretries + 1   # no spawn after FATAL
    clock.advance(POLICY.backoff_max)
    assert rs.tick() == []


def test_a_spawn_failure_on_respawn_counts_as_a_crash(launcher, clock):
    rs = _running(launcher, clock, 1)
    r = rs.rings[0]
    r.proc.exit(1)
    rs.tick()
    launcher.fail = SpawnError("cannot start worker")
    clock.advance(POLICY.backoff_max)
    assert rs.tick() == []
    assert r.state is RunState.BACKOFF and r.restarter.exits[ExitCause.CRASH] == 2


def test_heartbeat_timeout_aborts_then_kills_a_silent_worker(launcher, clock):
    rs = _running(launcher, clock, 2)
    hung, alive = rs.rings
    hung.proc.ignore = frozenset({signal.SIGABRT})           # a wedged worker: SIGABRT does not end it
    clock.advance(HEARTBEAT - 1)
    rs.on_message(alive, {"type": control.W_HEARTBEAT, "pid": alive.proc.pid})
    clock.advance(1.5)                                        # hung: silent past the timeout; alive: not
    rs.tick()
    assert hung.proc.signals == [signal.SIGABRT] and alive.proc.signals == []
    assert rs.next_deadline() == clock() + GRACE
    clock.advance(GRACE)
    proc = hung.proc
    rs.tick()                                                 # SIGKILL at the grace deadline
    assert proc.signals == [signal.SIGABRT, signal.SIGKILL]
    rs.tick()                                                 # reaped as a timeout, not a crash
    assert hung.restarter.last_exit == (ExitCause.TIMEOUT, KILLED)
    assert hung.state is RunState.BACKOFF


def test_a_worker_never_ready_is_aborted_and_the_next_attempt_gets_longer(launcher, clock):
    rs = _ringset(launcher, clock, 1)
    rs.start()
    r = rs.rings[0]
    clock.advance(READY + 0.1)
    rs.tick()
    assert r.proc.returncode == -int(signal.SIGABRT)
    rs.tick()
    assert r.restarter.last_exit[0] is ExitCause.TIMEOUT and r.restarter.ready_scale == 2
    clock.advance(POLICY.backoff_max)
    rs.tick()                                                 # respawned
    clock.advance(READY + 0.1)
    rs.tick()
    assert r.proc is not None and r.proc.signals == []        # the second attempt has 2 x READY


def test_stop_asks_then_sigterms_and_nothing_respawns(launcher, clock):
    rs = _running(launcher, clock, 2)
    asked = []
    assert rs.stop(asked.append) is True
    assert [r.name for r in asked] == ["dom3/dev0/ring0", "dom3/dev0/ring1"]
    assert all(p.signals == [signal.SIGTERM] for p in launcher.procs())
    assert all(r.state is RunState.STOPPED and r.proc is None for r in rs.rings)
    assert all(r.restarter.last_exit[0] is ExitCause.REQUESTED for r in rs.rings)
    clock.advance(POLICY.backoff_max)
    assert rs.tick() == [] and len(launcher.procs()) == 2


def test_stop_sigkills_a_worker_that_ignores_sigterm_after_the_grace(launcher, clock):
    launcher.ignore = frozenset({signal.SIGTERM})
    rs = _running(launcher, clock, 1)
    proc = rs.rings[0].proc
    t0 = clock()
    assert rs.stop() is True
    assert proc.signals == [signal.SIGTERM, signal.SIGKILL]
    assert clock() - t0 >= GRACE                               # the kill waited for the grace period
    assert rs.rings[0].state is RunState.STOPPED


def test_stop_gives_up_on_an_unkillable_worker(launcher, clock):
    launcher.ignore = frozenset({signal.SIGTERM, signal.SIGKILL})
    rs = _running(launcher, clock, 1)
    assert rs.stop() is False


def test_stop_during_backoff_cancels_the_respawn(launcher, clock):
    rs = _running(launcher, clock, 1)
    rs.rings[0].proc.exit(1)
    rs.tick()
    assert rs.stop() is True
    clock.advance(POLICY.backoff_max)
    assert rs.tick() == [] and len(launcher.procs()) == 1


def test_operator_restart_ring_replaces_only_that_worker_and_forgets_failures(launcher, clock):
    rs = _running(launcher, clock, 2)
    r0, r1 = rs.rings
    r0.restarter.failures = 2
    old0, old1 = r0.proc, r1.proc
    rs.restart_ring(r0)
    assert old0.signals == [signal.SIGTERM] and old1.signals == []
    assert r0.proc is not old0 and r0.state is RunState.STARTING and r0.restarter.failures == 0
    assert r1.proc is old1


def test_fatal_error_message_and_stats(launcher, clock):
    rs = _running(launcher, clock, 1)
    r = rs.rings[0]
    rs.on_message(r, {"type": control.W_STATS, "pid": r.proc.pid,
                      "metrics": {"ops": 5, "flag": True, 3: 1, "name": "x", "lat": 1.5}})
    assert r.stats == {"ops": 5, "lat": 1.5}                  # numbers only, named by strings
    assert rs.on_message(r, {"type": control.W_ERROR, "pid": r.proc.pid, "reason": "cannot map"}) is None
    assert rs.on_message(r, {"type": control.W_ERROR, "pid": r.proc.pid, "fatal": True,
                             "reason": "ring order 11 > 9"}) == "fatal"
    assert r.fatal_reason == "ring order 11 > 9"


def test_ready_records_the_build_the_worker_runs_and_a_respawn_forgets_it(launcher, clock):
    rs = _ringset(launcher, clock)
    rs.start()
    a, b = rs.rings
    assert rs.on_message(a, {"type": control.W_READY, "pid": a.proc.pid, "build": "compiled"}) == "ready"
    assert rs.on_message(b, {"type": control.W_READY, "pid": b.proc.pid, "build": "x; rm -rf /"}) == "ready"
    assert (a.build, b.build) == ("compiled", None)  # only the values buildinfo.build() can say
    a.proc.exit(1)
    clock.advance(POLICY.startsecs + 1)
    rs.tick()
    clock.advance(POLICY.backoff_initial)
    assert rs.tick() == [(a, "respawned")]
    assert a.build is None  # the new process has not said yet
