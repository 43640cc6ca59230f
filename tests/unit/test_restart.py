"""The ring worker restart policy: STARTING, RUNNING, BACKOFF with growing delay, FATAL after quick failures."""
from __future__ import annotations

from hypothesis import given, strategies as st

from xen9p_supervisor.restart import ExitCause, Restarter, RestartPolicy, RunState

P = RestartPolicy(startsecs=2.0, startretries=3, backoff_initial=0.5, backoff_max=4.0)


def test_start_ready_running():
    r = Restarter(P)
    r.spawned(0.0)
    assert r.state is RunState.STARTING
    assert r.ready(0.1) is True and r.state is RunState.RUNNING
    assert r.ready(0.2) is False


def test_quick_failures_back_off_growing_then_fatal():
    r = Restarter(P)
    r.spawned(0.0)
    delays = []
    t = 0.0
    for _ in range(3):
        assert r.exited(t + 0.01, ExitCause.CRASH, 1) is RunState.BACKOFF
        delays.append(r.respawn_at - (t + 0.01))
        assert not r.due(r.respawn_at - 0.001) and r.due(r.respawn_at)
        t = r.respawn_at
        r.respawning(t)
    assert delays == [0.5, 1.0, 2.0]
    assert r.exited(t + 0.01, ExitCause.CRASH, 1) is RunState.FATAL
    assert r.respawn_at is None and not r.due(1e9)
    assert r.restarts == 3 and r.exits[ExitCause.CRASH] == 4


def test_crash_after_long_run_starts_a_fresh_count():
    r = Restarter(P)
    r.spawned(0.0)
    r.ready(0.1)
    for i in range(10):
        assert r.exited(100.0 * (i + 1), ExitCause.CRASH, -9) is RunState.BACKOFF
        assert r.respawn_at - 100.0 * (i + 1) == 0.5
        at = r.respawn_at
        r.respawning(at)
        r.ready(at + 0.1)


def test_never_ready_counts_as_quick_even_if_slow():
    r = Restarter(P)
    r.spawned(0.0)
    assert r.exited(50.0, ExitCause.TIMEOUT) is RunState.BACKOFF
    assert r.failures == 1 and r.exits[ExitCause.TIMEOUT] == 1


def test_requested_exit_stops_without_restart():
    r = Restarter(P)
    r.spawned(0.0)
    r.ready(0.1)
    r.stopping()
    assert r.state is RunState.STOPPING
    assert r.exited(0.2, ExitCause.REQUESTED, 0) is RunState.STOPPED
    assert r.respawn_at is None and r.failures == 0


def test_stop_during_backoff_cancels_respawn():
    r = Restarter(P)
    r.spawned(0.0)
    r.exited(0.1, ExitCause.CRASH, 1)
    r.stopping()
    assert r.state is RunState.STOPPED and not r.due(100)


def test_reset_leaves_fatal():
    r = Restarter(RestartPolicy(startretries=0))
    r.spawned(0.0)
    assert r.exited(0.1, ExitCause.CRASH, 1) is RunState.FATAL
    r.reset()
    assert r.state is RunState.STOPPED and r.failures == 0


@given(st.lists(st.tuples(st.floats(0, 10), st.booleans(), st.sampled_from(list(ExitCause))), max_size=40))
def test_invariants(events):
    pol = RestartPolicy(startsecs=1.0, startretries=2, backoff_initial=0.1, backoff_max=1.0)
    r = Restarter(pol)
    t = 0.0
    r.spawned(t)
    for dt, ready, cause in events:
        if r.state is RunState.FATAL:
            break
        t += dt
        if ready:
            r.ready(t)
        t += dt
        s = r.exited(t, cause)
        assert r.failures <= pol.startretries + 1
        if s is RunState.BACKOFF:
            assert t < r.respawn_at <= t + pol.backoff_max
            t = r.respawn_at
            r.respawning(t)
        elif s is RunState.STOPPED:
            assert cause is ExitCause.REQUESTED
            r.spawned(t)


def test_ready_timeouts_lengthen_the_next_ready_deadline_and_ready_resets_it():
    r = Restarter(RestartPolicy(startsecs=2, startretries=5))
    r.spawned(0.0)
    assert r.exited(10.0, ExitCause.TIMEOUT, -6) is RunState.BACKOFF
    assert r.ready_scale == 2
    r.respawning(11.0)
    r.exited(31.0, ExitCause.TIMEOUT, -6)
    assert r.ready_scale == 4
    for t in (40.0, 80.0, 120.0):
        r.respawning(t)
        r.exited(t + 1, ExitCause.TIMEOUT, -6)
    assert r.ready_scale == Restarter.MAX_READY_SCALE
    r.respawning(200.0)
    assert r.ready(201.0)
    assert r.ready_scale == 1


def test_crash_before_ready_does_not_lengthen_the_ready_deadline():
    r = Restarter(RestartPolicy())
    r.spawned(0.0)
    r.exited(0.5, ExitCause.CRASH, 1)
    assert r.ready_scale == 1
