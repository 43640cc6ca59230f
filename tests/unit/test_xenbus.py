"""The backend handshake table: every documented path, reconnect, libxl detach, spurious events.

A tiny fake 'xenstore view' replays the backend state the actions would write.
"""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from xen9p_common.xenbus import (
    TABLE, Action as A, DevicePhase as S, Event as E, XenbusState as X, backend_event,
    frontend_event, parse_state, transition,
)

WRITES = {A.SET_STATE_INITWAIT: X.InitWait, A.SET_STATE_CONNECTED: X.Connected,
          A.SET_STATE_CLOSING: X.Closing, A.SET_STATE_CLOSED: X.Closed}


def run(events, state=S.NEW):
    """Feed events; return the final state, every action in order, and the backend states written."""
    actions, written = [], []
    for ev in events:
        state, acts = transition(state, ev)
        actions.extend(acts)
        written.extend(WRITES[a] for a in acts if a in WRITES)
    return state, actions, written


HANDSHAKE = [E.ATTACHED, E.FRONTEND_INITIALISED, E.WORKERS_READY]


def test_enum_values():
    assert [int(s) for s in X] == list(range(9))
    assert X.Initialising == 1 and X.Closed == 6 and X.Reconfigured == 8


def test_handshake_to_connected():
    state, actions, written = run(HANDSHAKE)
    assert state is S.CONNECTED
    assert actions == [A.VALIDATE_CONFIG, A.WRITE_FEATURES, A.SET_STATE_INITWAIT,
                       A.VALIDATE_FRONTEND, A.CREATE_DEVICE_STATE, A.SPAWN_WORKERS,
                       A.SET_STATE_CONNECTED]
    assert written == [X.InitWait, X.Connected]
    # features go out before InitWait: the frontend reads them when it sees 2
    assert actions.index(A.WRITE_FEATURES) < actions.index(A.SET_STATE_INITWAIT)


def test_frontend_teardown_closing_then_closed():
    state, actions, written = run(HANDSHAKE + [E.FRONTEND_CONNECTED, E.FRONTEND_CLOSING, E.FRONTEND_CLOSED])
    assert state is S.CLOSED
    assert written == [X.InitWait, X.Connected, X.Closing, X.Closed]
    tail = actions[actions.index(A.SET_STATE_CONNECTED) + 1:]
    assert tail == [A.STOP_WORKERS, A.SET_STATE_CLOSING, A.SET_STATE_CLOSED, A.FREE_DEVICE_STATE]


@pytest.mark.parametrize("ev", [E.FRONTEND_CLOSED, E.FRONTEND_GONE])
def test_frontend_vanishes_while_connected(ev):
    state, actions, written = run(HANDSHAKE + [ev])
    assert state is S.CLOSED and written[-1] == X.Closed
    assert actions[-3:] == [A.STOP_WORKERS, A.SET_STATE_CLOSED, A.FREE_DEVICE_STATE]


def test_reconnect_after_closed():
    state, actions, written = run(HANDSHAKE + [E.FRONTEND_CLOSING, E.FRONTEND_CLOSED,
                                               E.FRONTEND_INITIALISING] + HANDSHAKE[1:])
    assert state is S.CONNECTED
    assert written == [X.InitWait, X.Connected, X.Closing, X.Closed, X.InitWait, X.Connected]
    assert actions.count(A.SPAWN_WORKERS) == 2 and actions.count(A.CREATE_DEVICE_STATE) == 2


def test_coalesced_close_and_reinit():
    """Closing seen, then the frontend already back at 1 (its 6 was missed)."""
    state, actions, written = run(HANDSHAKE + [E.FRONTEND_CLOSING, E.FRONTEND_INITIALISING])
    assert state is S.ADVERTISED and written[-2:] == [X.Closed, X.InitWait]
    assert A.FREE_DEVICE_STATE in actions


def test_frontend_restart_while_connected():
    state, actions, written = run(HANDSHAKE + [E.FRONTEND_INITIALISING])
    assert state is S.ADVERTISED
    assert actions[-5:] == [A.STOP_WORKERS, A.SET_STATE_CLOSED, A.FREE_DEVICE_STATE,
                            A.WRITE_FEATURES, A.SET_STATE_INITWAIT]


@pytest.mark.parametrize("prefix", [[E.ATTACHED], [E.ATTACHED, E.FRONTEND_INITIALISED], HANDSHAKE,
                                    HANDSHAKE + [E.FRONTEND_CLOSING], HANDSHAKE + [E.FRONTEND_CLOSED]])
def test_libxl_detach_reaches_closed_from_anywhere(prefix):
    state, actions, written = run(prefix + [E.BACKEND_OFFLINE])
    assert state is S.DETACHED and written[-1] == X.Closed
    if A.SPAWN_WORKERS in actions:
        assert A.STOP_WORKERS in actions and actions[-1] == A.FREE_DEVICE_STATE


def test_libxl_detach_then_dir_removed():
    state, actions, _ = run(HANDSHAKE + [E.BACKEND_OFFLINE, E.FRONTEND_INITIALISING, E.BACKEND_GONE])
    assert state is S.GONE and actions[-1] == A.FORGET_DEVICE
    # a detached device does not reconnect just because the frontend says 1
    assert actions.count(A.SET_STATE_INITWAIT) == 1


def test_reattach_after_detach():
    state, _, written = run(HANDSHAKE + [E.BACKEND_OFFLINE] + HANDSHAKE)
    assert state is S.CONNECTED and written[-2:] == [X.InitWait, X.Connected]


@pytest.mark.parametrize("ev", [E.BACKEND_GONE, E.DOMAIN_RELEASED])
@pytest.mark.parametrize("prefix", [[], [E.ATTACHED], HANDSHAKE, HANDSHAKE + [E.FRONTEND_CLOSING]])
def test_vanishing_releases_without_writing(prefix, ev):
    before = run(prefix)[1]
    state, actions, _ = run(prefix + [ev])
    new = actions[len(before):]
    assert state is S.GONE
    assert new == [A.STOP_WORKERS, A.FREE_DEVICE_STATE, A.FORGET_DEVICE]
    assert not any(a in WRITES for a in new)


@pytest.mark.parametrize("prefix", [[E.ATTACHED], [E.ATTACHED, E.FRONTEND_INITIALISED], HANDSHAKE])
def test_failure_closes_and_cleans(prefix):
    state, actions, written = run(prefix + [E.FAILURE])
    assert state is S.FAILED and written[-1] == X.Closed
    assert actions[-4:] == [A.REPORT_FAILURE, A.STOP_WORKERS, A.SET_STATE_CLOSED, A.FREE_DEVICE_STATE]


def test_failure_does_not_loop_on_rescans():
    """After a failure the frontend still at 1 must not trigger a fresh attempt on every rescan."""
    state, actions, _ = run([E.ATTACHED, E.FAILURE] + [E.FRONTEND_INITIALISING] * 5)
    assert state is S.FAILED and actions.count(A.SET_STATE_INITWAIT) == 1
    # once the frontend has closed, it may try again
    state, _, written = run([E.FRONTEND_CLOSED, E.FRONTEND_INITIALISING], state)
    assert state is S.ADVERTISED and written == [X.InitWait]


def test_frontend_gives_up_before_connecting():
    state, _, written = run([E.ATTACHED, E.FRONTEND_CLOSING, E.FRONTEND_CLOSED])
    assert state is S.CLOSED and written == [X.InitWait, X.Closing, X.Closed]


def test_closing_timeout():
    state, actions, _ = run(HANDSHAKE + [E.FRONTEND_CLOSING, E.CLOSE_TIMEOUT])
    assert state is S.CLOSED and actions[-1] == A.FREE_DEVICE_STATE


def test_stale_backend_of_a_dead_daemon_is_closed_then_reconnects():
    """A backend state a previous xen9pd wrote: check the toolstack's keys, write Closed; the
    frontend follows to Closed and is back at Initialising for a fresh handshake."""
    state, actions, written = run([E.STALE_BACKEND])
    assert state is S.CLOSED and actions == [A.VALIDATE_CONFIG, A.SET_STATE_CLOSED] and written == [X.Closed]
    state, actions, written = run([E.FRONTEND_CLOSED, E.FRONTEND_INITIALISING] + HANDSHAKE[1:], state)
    assert state is S.CONNECTED and written == [X.InitWait, X.Connected]


def test_stale_backend_with_bad_keys_fails_closed():
    # validate_config raised: the supervisor feeds FAILURE in the state the row reached
    state, actions, written = run([E.FAILURE], transition(S.NEW, E.STALE_BACKEND)[0])
    assert state is S.FAILED and actions == [A.REPORT_FAILURE, A.SET_STATE_CLOSED] and written == [X.Closed]
    assert transition(S.CONNECTED, E.STALE_BACKEND) == (S.CONNECTED, ())  # only a device we never wrote


# -- spurious events -----------------------------------------------------------

REPEATABLE = [
    (S.ADVERTISED, E.ATTACHED), (S.ADVERTISED, E.FRONTEND_INITIALISING),
    (S.CONNECTING, E.FRONTEND_INITIALISED), (S.CONNECTED, E.FRONTEND_CONNECTED),
    (S.CONNECTED, E.FRONTEND_INITIALISED), (S.CONNECTED, E.WORKERS_READY),
    (S.CLOSING, E.FRONTEND_CLOSING), (S.CLOSING, E.WORKERS_READY), (S.CLOSED, E.FRONTEND_CLOSED),
    (S.CLOSED, E.WORKERS_READY),
    (S.NEW, E.FRONTEND_INITIALISED), (S.NEW, E.WORKERS_READY),
]


@pytest.mark.parametrize("state,event", REPEATABLE)
def test_spurious_events_are_noops(state, event):
    assert transition(state, event) == (state, ())


@pytest.mark.parametrize("event", list(E))
def test_gone_is_terminal(event):
    assert transition(S.GONE, event) == (S.GONE, ())


def test_garbage_events_are_ignored():
    assert transition(S.CONNECTED, "nonsense") == (S.CONNECTED, ())
    assert transition(S.CONNECTED, None) == (S.CONNECTED, ())
    assert transition(S.CONNECTED, []) == (S.CONNECTED, ())


def test_table_is_data_over_known_names():
    for (s, e), (n, acts) in TABLE.items():
        assert s in S and e in E and n in S
        assert isinstance(acts, tuple) and all(a in A for a in acts)


@given(st.lists(st.sampled_from(list(E)), max_size=80))
def test_random_sequences_stay_in_the_table(events):
    state = S.NEW
    for ev in events:
        nxt, acts = transition(state, ev)
        assert nxt in S and isinstance(acts, tuple)
        state = nxt


@given(st.lists(st.sampled_from(list(E)), max_size=80))
def test_random_sequences_keep_resources_balanced(events):
    """Workers/state are only ever held in the states that own them."""
    state, held = S.NEW, False
    for ev in events:
        state, acts = transition(state, ev)
        for a in acts:
            if a is A.SPAWN_WORKERS:
                held = True
            elif a is A.FREE_DEVICE_STATE:
                held = False
        owners = {S.CONNECTING, S.CONNECTED, S.CLOSING}
        if state not in owners:
            assert not held, state
        if state is S.CONNECTED:
            assert held


# -- parsing and event derivation ----------------------------------------------

@pytest.mark.parametrize("raw,want", [
    ("1", X.Initialising), ("4", X.Connected), (" 6\n", X.Closed), (b"5", X.Closing), ("08", X.Reconfigured),
    ("0", X.Unknown),
])
def test_parse_state_good(raw, want):
    assert parse_state(raw) is want


@pytest.mark.parametrize("raw", [None, "", " ", "9", "-1", "+1", "0x4", "1_0", "4.0", "abc", "٣",
                                 "99999999999999999999", b"\xff", b"\x00"])
def test_parse_state_garbage(raw):
    assert parse_state(raw) is None


@given(st.one_of(st.text(max_size=12), st.binary(max_size=12)))
def test_parse_state_never_raises(raw):
    got = parse_state(raw)
    assert got is None or got in X


def test_frontend_event_mapping():
    assert frontend_event(X.Initialised) is E.FRONTEND_INITIALISED
    assert frontend_event(X.Closing) is E.FRONTEND_CLOSING
    assert frontend_event(None) is E.FRONTEND_GONE and frontend_event(X.Unknown) is E.FRONTEND_GONE
    assert frontend_event(X.InitWait) is None and frontend_event(X.Reconfiguring) is None


def test_backend_event_mapping():
    assert backend_event(X.Initialising, True, None) is E.ATTACHED
    assert backend_event(X.InitWait, True, X.InitWait) is None
    # libxl detach: online=0 and state=5 that we did not write
    assert backend_event(X.Closing, False, X.Connected) is E.BACKEND_OFFLINE
    assert backend_event(X.Closing, True, X.Connected) is E.BACKEND_OFFLINE
    # our own Closing read back is not the toolstack
    assert backend_event(X.Closing, True, X.Closing) is None
    # libxl overwrote our Closed with Closing: answer again
    assert backend_event(X.Closing, False, X.Closed) is E.BACKEND_OFFLINE
    assert backend_event(None, True, X.Connected) is None
    # offline and already answered: rescans stay quiet
    assert backend_event(X.Closed, False, X.Closed) is None
    assert backend_event(None, False, X.Connected) is E.BACKEND_OFFLINE
    # detach while we were already Closing: online=0 still counts
    assert backend_event(X.Closing, False, X.Closing) is E.BACKEND_OFFLINE


def test_detached_answers_a_repeated_libxl_closing():
    assert transition(S.DETACHED, E.BACKEND_OFFLINE) == (S.DETACHED, (A.SET_STATE_CLOSED,))
