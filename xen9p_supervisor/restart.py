"""The restart policy of one ring worker as an explicit state machine (STARTING, RUNNING, BACKOFF, FATAL).

Pure: no processes, no clock reads. The caller reports what happened with a timestamp and obeys the answer.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class RunState(enum.StrEnum):
    STOPPED = "stopped"      # not started, or stopped on purpose
    STARTING = "starting"    # spawned, not yet mapped and bound
    RUNNING = "running"      # reported ready
    BACKOFF = "backoff"      # exited unexpectedly, waiting to respawn
    STOPPING = "stopping"    # asked to stop, waiting for the exit
    FATAL = "fatal"          # too many quick failures: give up


class ExitCause(enum.StrEnum):
    REQUESTED = "requested"  # we asked it to stop
    CRASH = "crash"          # it died on its own
    TIMEOUT = "timeout"      # we killed it for missing heartbeats or never getting ready


@dataclass(frozen=True)
class RestartPolicy:
    startsecs: float = 2.0        # an exit sooner than this after spawn (or before ready) is a quick failure
    startretries: int = 3         # quick failures in a row tolerated; one more is FATAL
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    def delay(self, failures: int) -> float:
        """Backoff before respawn number `failures` (1-based): initial, doubled each time, capped."""
        return min(self.backoff_max, self.backoff_initial * (2 ** max(0, failures - 1)))


@dataclass
class Restarter:
    """Restart bookkeeping of one ring: state, failures in a row, when to respawn, exit history."""

    policy: RestartPolicy
    state: RunState = RunState.STOPPED
    failures: int = 0             # quick failures in a row
    restarts: int = 0             # respawns after an unrequested exit, for status
    spawned_at: float | None = None
    ready_at: float | None = None
    respawn_at: float | None = None
    last_exit: tuple[ExitCause, int | None] | None = None
    exits: dict | None = None     # ExitCause -> count
    ready_scale: int = 1          # the ready deadline is multiplied by this; doubles after each
                                  # attempt killed for never getting ready (a slow dom0 is not a dead one)
    MAX_READY_SCALE = 8

    def __post_init__(self) -> None:
        if self.exits is None:
            self.exits = {c: 0 for c in ExitCause}

    def spawned(self, now: float) -> None:
        self.state = RunState.STARTING
        self.spawned_at = now
        self.ready_at = None
        self.respawn_at = None

    def ready(self, now: float) -> bool:
        """The worker mapped and bound its ring. True if this changed the state."""
        if self.state is not RunState.STARTING:
            return False
        self.state = RunState.RUNNING
        self.ready_at = now
        self.ready_scale = 1
        return True

    def stopping(self) -> None:
        if self.state in (RunState.STARTING, RunState.RUNNING):
            self.state = RunState.STOPPING
        elif self.state is RunState.BACKOFF:
            self.state = RunState.STOPPED
            self.respawn_at = None

    def exited(self, now: float, cause: ExitCause, code: int | None = None) -> RunState:
        """Record an exit; returns the new state (STOPPED, BACKOFF with respawn_at set, or FATAL)."""
        self.last_exit = (cause, code)
        self.exits[cause] += 1
        if cause is ExitCause.REQUESTED or self.state in (RunState.STOPPING, RunState.STOPPED):
            self.state = RunState.STOPPED
            self.respawn_at = None
            return self.state
        started = self.spawned_at if self.spawned_at is not None else now
        quick = self.ready_at is None or now - started < self.policy.startsecs
        if cause is ExitCause.TIMEOUT and self.ready_at is None:
            self.ready_scale = min(self.ready_scale * 2, self.MAX_READY_SCALE)
        # A worker that served for a while and then died starts a fresh count: one crash
        # after hours is not "repeated failure to start".
        self.failures = self.failures + 1 if quick else 1
        if quick and self.failures > self.policy.startretries:
            self.state = RunState.FATAL
            self.respawn_at = None
            return self.state
        self.state = RunState.BACKOFF
        self.respawn_at = now + self.policy.delay(self.failures)
        return self.state

    def adopted(self, now: float) -> None:
        """A live worker taken over from a previous daemon: serving, and not a quick failure if it dies."""
        self.state = RunState.RUNNING
        self.spawned_at = now - self.policy.startsecs
        self.ready_at = now
        self.respawn_at = None

    def resume_due(self, now: float) -> None:
        """The worker is gone (it died while no daemon ran): respawn at once, like after a crash."""
        self.state = RunState.BACKOFF
        self.respawn_at = now

    def due(self, now: float) -> bool:
        """True when a BACKOFF worker should be respawned now."""
        return self.state is RunState.BACKOFF and self.respawn_at is not None and now >= self.respawn_at

    def respawning(self, now: float) -> None:
        self.restarts += 1
        self.spawned(now)

    def reset(self) -> None:
        """Forget failures (operator restart-ring, or a fresh device connect)."""
        self.failures = 0
        self.ready_scale = 1
        if self.state is RunState.FATAL:
            self.state = RunState.STOPPED
