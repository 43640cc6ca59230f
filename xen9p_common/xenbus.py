"""XenbusState and the backend device handshake as a transition table.

The supervisor turns what it reads in xenstore into Events, looks up (state, event) here, and performs the Actions.
"""
from __future__ import annotations

import enum


class XenbusState(enum.IntEnum):
    Unknown = 0
    Initialising = 1
    InitWait = 2
    Initialised = 3
    Connected = 4
    Closing = 5
    Closed = 6
    Reconfiguring = 7
    Reconfigured = 8


def parse_state(value: str | bytes | None) -> XenbusState | None:
    """A xenstore `state` value as XenbusState, or None for anything malformed."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    value = value.strip()
    # Only plain decimal digits: no sign, no "0x", no "1_0", and nothing absurdly long.
    if not value or len(value) > 3 or not value.isascii() or not value.isdigit():
        return None
    n = int(value)
    return XenbusState(n) if n <= XenbusState.Reconfigured else None


class DevicePhase(enum.StrEnum):
    """Where our side of one (domid, devid) device is."""

    NEW = "new"                # discovered, nothing written yet
    ADVERTISED = "advertised"  # features written, backend InitWait
    CONNECTING = "connecting"  # frontend values accepted, workers starting
    CONNECTED = "connected"    # backend Connected, serving
    CLOSING = "closing"        # workers stopped, backend Closing, waiting for frontend Closed
    CLOSED = "closed"          # backend Closed, nothing held; a frontend back at 1 reconnects
    FAILED = "failed"          # backend Closed after a failure; waits for the frontend to close first
    DETACHED = "detached"      # toolstack took the device offline; only a fresh attach revives it
    GONE = "gone"              # backend dir or domain gone: the supervisor forgets the device


class Event(enum.StrEnum):
    ATTACHED = "attached"                        # backend state 1 + online 1 (toolstack created/reset it)
    STALE_BACKEND = "stale_backend"              # a backend state past 1 that a previous backend instance wrote
    FRONTEND_INITIALISING = "frontend_initialising"
    FRONTEND_INITIALISED = "frontend_initialised"
    FRONTEND_CONNECTED = "frontend_connected"
    FRONTEND_CLOSING = "frontend_closing"
    FRONTEND_CLOSED = "frontend_closed"
    FRONTEND_GONE = "frontend_gone"              # frontend state missing, garbage or Unknown
    BACKEND_OFFLINE = "backend_offline"          # libxl detach: online=0 and/or state=5 we did not write
    BACKEND_GONE = "backend_gone"                # backend dir vanished
    DOMAIN_RELEASED = "domain_released"          # @releaseDomain and the domid is no longer running
    WORKERS_READY = "workers_ready"              # every ring worker reported mapped and bound
    FAILURE = "failure"                          # bad config/frontend values, spawn failure, worker FATAL
    CLOSE_TIMEOUT = "close_timeout"              # frontend never reached Closed after our Closing


class Action(enum.StrEnum):
    VALIDATE_CONFIG = "validate_config"
    WRITE_FEATURES = "write_features"            # versions, max-rings, max-ring-page-order
    SET_STATE_INITWAIT = "set_state_initwait"
    VALIDATE_FRONTEND = "validate_frontend"      # version, num-rings, ring-refN, event-channel-N
    CREATE_DEVICE_STATE = "create_device_state"
    SPAWN_WORKERS = "spawn_workers"
    SET_STATE_CONNECTED = "set_state_connected"
    STOP_WORKERS = "stop_workers"                # workers unmap and unbind as they exit
    SET_STATE_CLOSING = "set_state_closing"
    SET_STATE_CLOSED = "set_state_closed"
    FREE_DEVICE_STATE = "free_device_state"
    REPORT_FAILURE = "report_failure"            # one warning naming the device and the reason
    FORGET_DEVICE = "forget_device"


# Contract for the supervisor:
# - Events are level-triggered observations and may repeat, arrive late or be
#   spurious (watches coalesce; rescans re-observe). Pairs not in the table are
#   ignored: same state, no actions.
# - Actions run in the listed order. Every action is idempotent and a cleanup action
#   with nothing to clean is a no-op (stop_workers with no workers, free_device_state
#   with none created), so teardown rows need not know how far setup got.
# - If a setup action fails (validate_config, validate_frontend, create_device_state,
#   spawn_workers), the supervisor stops running that list and feeds Event.FAILURE.
# - Xenstore writes are skipped when the backend dir is gone, so rows reached by
#   BACKEND_GONE / DOMAIN_RELEASED never write (a write would recreate the dir).

S, E, A = DevicePhase, Event, Action

_ADVERTISE = (A.WRITE_FEATURES, A.SET_STATE_INITWAIT)
_START = (A.VALIDATE_FRONTEND, A.CREATE_DEVICE_STATE, A.SPAWN_WORKERS)
_TEARDOWN_CLOSED = (A.STOP_WORKERS, A.SET_STATE_CLOSED, A.FREE_DEVICE_STATE)
_TEARDOWN_CLOSING = (A.STOP_WORKERS, A.SET_STATE_CLOSING)
_FAIL = (A.REPORT_FAILURE,) + _TEARDOWN_CLOSED
_VANISH = (A.STOP_WORKERS, A.FREE_DEVICE_STATE, A.FORGET_DEVICE)

_LIVE = (S.NEW, S.ADVERTISED, S.CONNECTING, S.CONNECTED, S.CLOSING, S.CLOSED, S.FAILED, S.DETACHED)

_ROWS: list[tuple[DevicePhase, Event, DevicePhase, tuple[Action, ...]]] = [
    # Attach: advertise features, then wait for the frontend.
    (S.NEW, E.ATTACHED, S.ADVERTISED, (A.VALIDATE_CONFIG,) + _ADVERTISE),
    (S.NEW, E.FAILURE, S.FAILED, (A.REPORT_FAILURE, A.SET_STATE_CLOSED)),
    # A previous xen9pd died (or stopped) while serving: its workers and session are gone, so close
    # (the toolstack's keys checked, a reconnect needs them); a live frontend follows to Closed and
    # comes back at Initialising for a fresh handshake (the CLOSED rows below).
    (S.NEW, E.STALE_BACKEND, S.CLOSED, (A.VALIDATE_CONFIG, A.SET_STATE_CLOSED)),
    (S.CLOSED, E.FAILURE, S.FAILED, (A.REPORT_FAILURE, A.SET_STATE_CLOSED)),
    (S.ADVERTISED, E.FRONTEND_INITIALISED, S.CONNECTING, _START),
    (S.ADVERTISED, E.FRONTEND_CLOSING, S.CLOSING, (A.SET_STATE_CLOSING,)),
    (S.ADVERTISED, E.FRONTEND_CLOSED, S.CLOSED, (A.SET_STATE_CLOSED,)),
    (S.ADVERTISED, E.FRONTEND_GONE, S.CLOSED, (A.SET_STATE_CLOSED,)),
    (S.ADVERTISED, E.FAILURE, S.FAILED, _FAIL),
    # Workers mapped and bound: connected.
    (S.CONNECTING, E.WORKERS_READY, S.CONNECTED, (A.SET_STATE_CONNECTED,)),
    (S.CONNECTING, E.FAILURE, S.FAILED, _FAIL),
    (S.CONNECTING, E.FRONTEND_CLOSING, S.CLOSING, _TEARDOWN_CLOSING),
    (S.CONNECTING, E.FRONTEND_CLOSED, S.CLOSED, _TEARDOWN_CLOSED),
    (S.CONNECTING, E.FRONTEND_GONE, S.CLOSED, _TEARDOWN_CLOSED),
    (S.CONNECTING, E.FRONTEND_INITIALISING, S.ADVERTISED, _TEARDOWN_CLOSED + _ADVERTISE),
    # Serving; the frontend starts teardown (5 -> we stop and go 5 -> it goes 6 -> we go 6).
    (S.CONNECTED, E.FRONTEND_CLOSING, S.CLOSING, _TEARDOWN_CLOSING),
    (S.CONNECTED, E.FRONTEND_CLOSED, S.CLOSED, _TEARDOWN_CLOSED),
    (S.CONNECTED, E.FRONTEND_GONE, S.CLOSED, _TEARDOWN_CLOSED),
    (S.CONNECTED, E.FAILURE, S.FAILED, _FAIL),
    # A frontend seen back at 1 while we serve restarted without a clean close (missed watches, kexec).
    (S.CONNECTED, E.FRONTEND_INITIALISING, S.ADVERTISED, _TEARDOWN_CLOSED + _ADVERTISE),
    (S.CLOSING, E.FRONTEND_CLOSED, S.CLOSED, (A.SET_STATE_CLOSED, A.FREE_DEVICE_STATE)),
    (S.CLOSING, E.FRONTEND_GONE, S.CLOSED, (A.SET_STATE_CLOSED, A.FREE_DEVICE_STATE)),
    (S.CLOSING, E.CLOSE_TIMEOUT, S.CLOSED, (A.SET_STATE_CLOSED, A.FREE_DEVICE_STATE)),
    (S.CLOSING, E.FAILURE, S.FAILED, _FAIL),
    # Closed then Initialising seen as one coalesced change.
    (S.CLOSING, E.FRONTEND_INITIALISING, S.ADVERTISED,
     (A.SET_STATE_CLOSED, A.FREE_DEVICE_STATE) + _ADVERTISE),
    # Reconnect: after Closed, a frontend back at Initialising gets a fresh handshake.
    (S.CLOSED, E.FRONTEND_INITIALISING, S.ADVERTISED, _ADVERTISE),
    # The toolstack re-attached the same device (backend state back to 1).
    (S.CLOSED, E.ATTACHED, S.ADVERTISED, (A.VALIDATE_CONFIG,) + _ADVERTISE),
    (S.DETACHED, E.ATTACHED, S.ADVERTISED, (A.VALIDATE_CONFIG,) + _ADVERTISE),
    # After a failure the frontend still sits where it was (often at 1): reconnecting on that
    # would fail again on every rescan. Wait until it has seen our Closed and closed too.
    (S.FAILED, E.FRONTEND_CLOSED, S.CLOSED, ()),
    (S.FAILED, E.FRONTEND_GONE, S.CLOSED, ()),
    (S.FAILED, E.ATTACHED, S.ADVERTISED, (A.VALIDATE_CONFIG,) + _ADVERTISE),
]

# libxl detach (online=0, state=5) from any live state: it waits 10 s for our Closed,
# so answer at once, even if we were already Closed (libxl overwrote our 6 with 5).
_ROWS += [(s, E.BACKEND_OFFLINE, S.DETACHED, _TEARDOWN_CLOSED) for s in _LIVE
          if s not in (S.NEW, S.DETACHED)]
_ROWS += [(s, E.BACKEND_OFFLINE, S.DETACHED, (A.SET_STATE_CLOSED,)) for s in (S.NEW, S.DETACHED)]
# The backend dir vanished or the domain died: release everything, write nothing.
_ROWS += [(s, e, S.GONE, _VANISH) for s in _LIVE for e in (E.BACKEND_GONE, E.DOMAIN_RELEASED)]

TABLE: dict[tuple[DevicePhase, Event], tuple[DevicePhase, tuple[Action, ...]]] = {}
for _s, _e, _n, _a in _ROWS:
    if (_s, _e) in TABLE:
        raise AssertionError(f"duplicate transition {_s} + {_e}")
    TABLE[(_s, _e)] = (_n, _a)
del _s, _e, _n, _a, _ROWS

_NO_ACTIONS: tuple[Action, ...] = ()


def transition(state: DevicePhase, event: Event) -> tuple[DevicePhase, tuple[Action, ...]]:
    """Next state and the actions to perform; unlisted (state, event) pairs change nothing."""
    try:
        return TABLE[(state, event)]
    except (KeyError, TypeError):  # TypeError: an unhashable garbage event
        return state, _NO_ACTIONS


_FRONTEND_EVENTS = {
    XenbusState.Initialising: Event.FRONTEND_INITIALISING,
    XenbusState.Initialised: Event.FRONTEND_INITIALISED,
    XenbusState.Connected: Event.FRONTEND_CONNECTED,
    XenbusState.Closing: Event.FRONTEND_CLOSING,
    XenbusState.Closed: Event.FRONTEND_CLOSED,
    XenbusState.Unknown: Event.FRONTEND_GONE,
}


def frontend_event(state: XenbusState | None) -> Event | None:
    """The Event for an observed frontend state (None = missing or garbage node -> FRONTEND_GONE).

    InitWait and Reconfiguring/Reconfigured mean nothing to a 9pfs backend: no event.
    """
    if state is None:
        return Event.FRONTEND_GONE
    return _FRONTEND_EVENTS.get(state)


def backend_event(observed: XenbusState | None, online: bool,
                  last_written: XenbusState | None) -> Event | None:
    """The Event for our own backend `state`/`online` nodes, given the state we last wrote.

    libxl detaches by writing online=0 and state=5; a state we did not write ourselves
    is the toolstack talking. state=1 with online=1 is a (re-)attach. Offline stays an
    event until our state node holds the Closed we wrote in answer.
    """
    if not online:
        # Already answered with our Closed: stay quiet on every later rescan.
        answered = observed == last_written == XenbusState.Closed
        return None if answered else Event.BACKEND_OFFLINE
    if observed == last_written:
        return None
    if observed == XenbusState.Closing:
        return Event.BACKEND_OFFLINE
    if observed == XenbusState.Initialising:
        return Event.ATTACHED
    return None
