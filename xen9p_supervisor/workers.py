"""Ring worker processes: fork+exec with a CPU pin and a title, heartbeats, restarts through the Restarter.

A Ring is one worker slot of one device; it owns at most one live process at a time and its restart record.
Workers run in their own session and outlive xen9pd (see adopt.py): the next daemon adopts them.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from xen9p_common import control
from xen9p_common.buildinfo import BUILDS
from xen9p_common.control import RingSpec
from xen9p_common.errors import Xen9pError

from .restart import ExitCause, Restarter, RestartPolicy, RunState

log = logging.getLogger("xen9pd")


class SpawnError(Xen9pError):
    """A worker process could not be started at all."""


class CpuAllocator:
    """Round-robin over the configured CPUs, so consecutive rings (one device's rings) land on different cores."""

    def __init__(self, cpus: Sequence[int]) -> None:
        self.cpus = tuple(cpus) or tuple(sorted(os.sched_getaffinity(0)))
        self._next = 0

    def take(self) -> int:
        cpu = self.cpus[self._next % len(self.cpus)]
        self._next += 1
        return cpu

    def set_cpus(self, cpus: Sequence[int]) -> None:
        self.cpus = tuple(cpus) or tuple(sorted(os.sched_getaffinity(0)))


@dataclass
class Launcher:
    """Builds and execs the worker command line for one RingSpec."""

    worker_cmd: Sequence[str]
    platform: str
    sim_dir: str | None = None
    spin_us: float | None = None

    def argv(self, spec: RingSpec) -> list[str]:
        args = list(self.worker_cmd) + ["ring", "--platform", self.platform]
        if self.sim_dir:
            args += ["--sim-dir", self.sim_dir]
        args += ["--domid", str(spec.domid), "--devid", str(spec.devid), "--ring", str(spec.ring),
                 "--ring-ref", str(spec.ring_ref), "--evtchn", str(spec.evtchn), "--state", spec.state_name,
                 "--export", spec.export, "--security-model", spec.security_model,
                 "--supervisor", spec.supervisor, "--max-ring-order", str(spec.max_ring_order)]
        if self.spin_us is not None:
            args += ["--spin-us", f"{self.spin_us:g}"]
        return args

    def spawn(self, spec: RingSpec, cpu: int | None) -> subprocess.Popen:
        argv = self.argv(spec)
        exe = shutil.which(argv[0]) or argv[0]
        # The title replaces argv[0] (ps shows "xen9p dom3/dev0/ring1 -m xen9p_worker ..."); Python derives
        # sys.executable from argv[0], so tell it the real interpreter path. Not when worker_cmd starts
        # with a wrapper (env, nice, a script): the Python it execs gets its own argv[0], and
        # PYTHONEXECUTABLE would make the wrapper its sys.executable (what the lock keeper is run with).
        env = dict(os.environ)
        if os.path.basename(exe).startswith(("python", "pypy")):
            env["PYTHONEXECUTABLE"] = exe
        else:
            env.pop("PYTHONEXECUTABLE", None)
        title = f"xen9p {spec.name}"

        def in_child() -> None:
            # Runs between fork and exec: only async-signal-safe-ish syscalls, no logging, no locks.
            if cpu is not None:
                os.sched_setaffinity(0, (cpu,))

        try:
            # Own session, no parent-death signal: the worker keeps serving its guest when xen9pd exits
            # for a restart or dies, and the next xen9pd adopts it (adopt.py).
            return subprocess.Popen([title] + argv[1:], executable=exe, env=env, stdin=subprocess.DEVNULL,
                                    preexec_fn=in_child, close_fds=True, start_new_session=True)
        except OSError as e:
            raise SpawnError(f"{spec.name}: cannot start worker {argv[0]!r}: {e}") from e


@dataclass
class Ring:
    """One ring's worker: the process, its restart record, its last heartbeat and stats."""

    spec: RingSpec
    restarter: Restarter
    cpu: int | None = None
    proc: subprocess.Popen | None = None
    last_seen: float = 0.0
    kill_cause: ExitCause | None = None   # why we are signalling the process, if we are
    kill_at: float | None = None          # SIGKILL deadline after SIGABRT/SIGTERM
    stats: dict = field(default_factory=dict)
    started_at: float | None = None       # wall clock of the current process, for uptime
    fatal_reason: str | None = None
    adopted: bool = False                 # the live process was started by a previous xen9pd (older code?)
    build: str | None = None              # what the worker said it runs in "ready": compiled, pure, mixed

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    @property
    def state(self) -> RunState:
        return self.restarter.state


class RingSet:
    """The rings of one device: spawn, watch, restart and stop their workers."""

    def __init__(self, specs: Sequence[RingSpec], *, launcher: Launcher, cpus: CpuAllocator,
                 policy: RestartPolicy, heartbeat_timeout: float, ready_timeout: float, kill_grace: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rings = [Ring(s, Restarter(policy)) for s in specs]
        self.launcher = launcher
        self.cpus = cpus
        self.heartbeat_timeout = heartbeat_timeout
        self.ready_timeout = ready_timeout
        self.kill_grace = kill_grace
        self.clock = clock

    def by_name(self, name: str) -> Ring | None:
        for r in self.rings:
            if r.name == name:
                return r
        return None

    def start(self) -> None:
        for r in self.rings:
            r.cpu = self.cpus.take()
            self._spawn(r, first=True)

    def _spawn(self, r: Ring, first: bool) -> None:
        now = self.clock()
        r.proc = self.launcher.spawn(r.spec, r.cpu)
        r.build = None  # until this process says in "ready"
        r.adopted = False
        r.kill_cause, r.kill_at = None, None
        r.last_seen = now
        r.started_at = time.time()
        r.stats = {}
        if first:
            r.restarter.spawned(now)
        else:
            r.restarter.respawning(now)
        log.info("%s: worker started, pid %d on cpu %s", r.name, r.proc.pid, r.cpu)

    def adopt(self, r: Ring, proc, cpu: int | None, started_at: float | None) -> None:
        """Take over a live worker a previous xen9pd started (proc: adopt.AdoptedProcess); it is RUNNING."""
        now = self.clock()
        r.proc, r.cpu, r.started_at, r.adopted = proc, cpu, started_at, True
        r.kill_cause, r.kill_at, r.stats = None, None, {}
        r.last_seen = now  # it reconnects to our socket; silence past heartbeat_timeout = a hung worker
        r.restarter.adopted(now)

    def resume(self, r: Ring) -> None:
        """A ring whose worker died while no xen9pd ran: a fresh worker resumes it through the journal now."""
        r.cpu = self.cpus.take()
        r.restarter.resume_due(self.clock())

    # -- messages from workers ----------------------------------------------------

    def on_message(self, r: Ring, msg: dict) -> str | None:
        """Apply one worker message; returns 'ready' when the ring just became ready, 'fatal' on error{fatal}."""
        pid = msg.get("pid")
        if isinstance(pid, int) and r.proc is not None and pid != r.proc.pid:
            return None  # a late message from a previous process of this ring
        now = self.clock()
        r.last_seen = now
        t = msg.get("type")
        if t == control.W_READY:
            if r.restarter.ready(now):
                build = msg.get("build")
                r.build = build if isinstance(build, str) and build in BUILDS else None
                log.info("%s: worker pid %s mapped and bound%s", r.name, r.pid,
                         f" ({r.build} build)" if r.build else "")
                return "ready"
        elif t == control.W_STATS:
            m = msg.get("metrics")
            if isinstance(m, dict):
                r.stats = {k: v for k, v in m.items() if isinstance(k, str) and isinstance(v, (int, float))
                           and not isinstance(v, bool)}
        elif t == control.W_ERROR:
            reason = str(msg.get("reason", "unspecified"))[:300]
            if msg.get("fatal"):
                r.fatal_reason = reason
                return "fatal"
            log.warning("%s: worker reports: %s", r.name, reason)
        elif t == control.W_BYE:
            log.info("%s: worker says bye (%s)", r.name, str(msg.get("reason", ""))[:200])
        return None

    # -- periodic ------------------------------------------------------------------

    def tick(self) -> list[tuple[Ring, str]]:
        """Reap exits, enforce heartbeats, respawn due rings. Returns (ring, 'fatal'|'respawned') events."""
        out: list[tuple[Ring, str]] = []
        now = self.clock()
        for r in self.rings:
            if self._reap(r, now) == "fatal":
                out.append((r, "fatal"))
            if r.proc is not None:
                self._enforce(r, now)
            if r.restarter.due(now):
                try:
                    self._spawn(r, first=False)
                    out.append((r, "respawned"))
                except SpawnError as e:
                    r.restarter.exited(now, ExitCause.CRASH, None)
                    log.error("%s", e)
        return out

    def _reap(self, r: Ring, now: float) -> str | None:
        """Record the exit of r's process if it has exited; 'fatal' when the restarter gives up."""
        if r.proc is None or r.proc.poll() is None:
            return None
        code = None if r.adopted else r.proc.returncode  # an adopted worker's status went to its parent
        cause = r.kill_cause or ExitCause.CRASH
        r.proc = None
        r.kill_cause, r.kill_at = None, None
        new = r.restarter.exited(now, cause, code)
        how = ("exit status unknown (adopted)" if code is None
               else f"signal {-code}" if code < 0 else f"status {code}")
        if new is RunState.FATAL:
            if cause is ExitCause.TIMEOUT and r.restarter.ready_at is None:
                when = "without ever becoming ready (mapped and bound)"
            else:
                when = f"within {r.restarter.policy.startsecs:g}s of starting"
            r.fatal_reason = (f"worker failed {r.restarter.failures} times in a row {when} "
                              f"(last: {how}, {cause}); giving up (FATAL)")
            log.error("%s: %s", r.name, r.fatal_reason)
            return "fatal"
        if new is RunState.BACKOFF:
            log.warning("%s: worker exited (%s, %s); restarting in %.2fs", r.name, cause, how,
                        r.restarter.respawn_at - now)
        else:
            log.info("%s: worker exited (%s, %s)", r.name, cause, how)
        return None

    def _enforce(self, r: Ring, now: float) -> None:
        if r.kill_at is not None:
            if now >= r.kill_at:
                self._signal(r, signal.SIGKILL)
                r.kill_at = None
            return
        st = r.restarter.state
        silent = now - r.last_seen
        ready_timeout = self.ready_timeout * r.restarter.ready_scale
        if st is RunState.STARTING and now - (r.restarter.spawned_at or now) > ready_timeout:
            log.warning("%s: worker pid %s not ready after %.1fs; aborting it (next attempt gets %.0fs)",
                        r.name, r.pid, ready_timeout,
                        self.ready_timeout * min(r.restarter.ready_scale * 2, r.restarter.MAX_READY_SCALE))
        elif st is RunState.RUNNING and silent > self.heartbeat_timeout:
            log.warning("%s: worker pid %s silent for %.1fs; aborting it", r.name, r.pid, silent)
        else:
            return
        r.kill_cause = ExitCause.TIMEOUT
        self._signal(r, signal.SIGABRT)
        r.kill_at = now + self.kill_grace

    @staticmethod
    def _signal(r: Ring, sig: int) -> None:
        if r.proc is not None and r.proc.returncode is None:
            try:
                r.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def next_deadline(self) -> float | None:
        ds = []
        for r in self.rings:
            if r.kill_at is not None:
                ds.append(r.kill_at)
            if r.restarter.respawn_at is not None:
                ds.append(r.restarter.respawn_at)
        return min(ds) if ds else None

    # -- stopping ------------------------------------------------------------------

    def request_stop(self, send: Callable[[Ring], None] | None = None, rings: Sequence[Ring] | None = None) -> None:
        """Ask workers to stop (control message + SIGTERM); SIGKILL follows after kill_grace."""
        now = self.clock()
        for r in rings if rings is not None else self.rings:
            r.restarter.stopping()
            if r.proc is None or r.proc.returncode is not None:
                continue
            r.kill_cause = ExitCause.REQUESTED
            if send is not None:
                send(r)
            self._signal(r, signal.SIGTERM)
            r.kill_at = now + self.kill_grace

    def wait_stopped(self, timeout: float | None = None, rings: Sequence[Ring] | None = None) -> bool:
        """Block until the workers exited, SIGKILLing stragglers at their deadline. True if all gone."""
        deadline = self.clock() + (timeout if timeout is not None else self.kill_grace + 2.0)
        while True:
            alive = [r for r in (rings if rings is not None else self.rings)
                     if r.proc is not None and r.proc.poll() is None]
            now = self.clock()
            for r in alive:
                if r.kill_at is not None and now >= r.kill_at:
                    self._signal(r, signal.SIGKILL)
                    r.kill_at = None
            if not alive:
                break
            if now >= deadline:
                return False
            try:
                alive[0].proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                pass
        now = self.clock()
        for r in (rings if rings is not None else self.rings):
            self._reap(r, now)
        return True

    def stop(self, send: Callable[[Ring], None] | None = None) -> bool:
        self.request_stop(send)
        return self.wait_stopped()

    def restart_ring(self, r: Ring, send: Callable[[Ring], None] | None = None) -> None:
        """Operator restart: stop this ring's worker on purpose, then start a fresh one at once."""
        self.request_stop(send, [r])
        self.wait_stopped(rings=[r])
        r.restarter.reset()
        self._spawn(r, first=True)

    def all_running(self) -> bool:
        return all(r.restarter.state is RunState.RUNNING for r in self.rings)
