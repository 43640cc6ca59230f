"""Stand-ins for what xen9pd's glue (Device, RingSet) gets from the outside: a clock, worker processes, a launcher;
and a pid no process can have.

Time only moves when a test (or a fake process's blocking wait) advances the FakeClock, so supervision
deadlines (backoff, heartbeat, ready, kill grace, close timeout) are reached exactly, without waiting.
"""
from __future__ import annotations

import signal
import subprocess

from xen9p_common.control import RingSpec

KILLED = -int(signal.SIGKILL)  # a Popen returncode: killed by SIGKILL


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeProcess:
    """The part of subprocess.Popen that RingSet uses. Dies of any signal it does not ignore."""

    _next_pid = 40000

    def __init__(self, clock: FakeClock, ignore: frozenset[int] = frozenset()) -> None:
        FakeProcess._next_pid += 1
        self.pid = FakeProcess._next_pid
        self.clock = clock
        self.ignore = ignore
        self.returncode: int | None = None
        self.signals: list[int] = []

    def exit(self, code: int) -> None:
        """The worker ends on its own (code < 0: killed by signal -code)."""
        self.returncode = code

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Blocking for `timeout` is time passing on the fake clock."""
        if self.returncode is None:
            self.clock.advance(timeout or 0.0)
            raise subprocess.TimeoutExpired(f"fake worker {self.pid}", timeout or 0.0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if self.returncode is None and sig not in self.ignore:
            self.returncode = -sig


class FakeLauncher:
    """Launcher.spawn without processes: records every spawn; `fail` makes the next spawns raise."""

    def __init__(self, clock: FakeClock, ignore: frozenset[int] = frozenset()) -> None:
        self.clock = clock
        self.ignore = ignore
        self.spawned: list[tuple[RingSpec, int | None, FakeProcess]] = []
        self.fail: Exception | None = None

    def spawn(self, spec: RingSpec, cpu: int | None) -> FakeProcess:
        if self.fail is not None:
            raise self.fail
        p = FakeProcess(self.clock, self.ignore)
        self.spawned.append((spec, cpu, p))
        return p

    def procs(self, ring: int | None = None) -> list[FakeProcess]:
        return [p for spec, _, p in self.spawned if ring is None or spec.ring == ring]

    def live(self) -> list[FakeProcess]:
        return [p for p in self.procs() if p.returncode is None]



class FakeState:
    """A device state handle that records its end."""

    def __init__(self, name: str, **params) -> None:
        self.name, self.params = name, params
        self.closed = self.unlinked = False

    def close(self) -> None:
        self.closed = True

    def unlink(self) -> None:
        self.unlinked = True


class FakeStateFactory:
    """DeviceStateFactory keeping every state it created; `fail` makes create raise."""

    def __init__(self) -> None:
        self.created: list[FakeState] = []
        self.fail: Exception | None = None

    def create(self, name: str, **params) -> FakeState:
        if self.fail is not None:
            raise self.fail
        st = FakeState(name, **params)
        self.created.append(st)
        return st

    def live(self) -> list[FakeState]:
        return [s for s in self.created if not s.unlinked]


def dead_pid() -> int:
    """A pid no process can have (a reaped child's could be reused at once on a busy machine)."""
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1
