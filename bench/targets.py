"""Servers under test, started as real processes: xen9p's socket transport, diod, and ring workers.

Each target gives the load generator its channel specs and the bench the pids whose CPU and RSS count.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .loadgen import ChannelSpec, LoadPool

DIOD = "/usr/sbin/diod"
REPO = Path(__file__).resolve().parents[1]
# Which code the server processes run: "source" (this tree's .py files: started in the tree, which
# comes first on their path) or "installed" (the package pip installed for this interpreter — the
# compiled build where it was compiled: started outside the tree). --code sets it (add_code_argument).
CODES = ("source", "installed")
WORKER_CODE = "source"


def add_code_argument(ap) -> None:
    """The --code option of `python -m bench` and `python -m bench.cost`; the caller sets WORKER_CODE from it."""
    ap.add_argument("--code", choices=CODES, default="source",
                    help="the servers run this tree's .py files (source, the default) or the package installed "
                         "for this interpreter (installed: the compiled build where pip compiled it)")


def worker_cwd(code: str | None = None) -> str:
    """The directory server processes start in: it decides, by coming first on sys.path, which code runs."""
    return str(REPO) if (code or WORKER_CODE) == "source" else tempfile.gettempdir()


def worker_env(code: str | None = None) -> dict:
    """The server processes' environment: without PYTHONPATH when they must run the installed package."""
    env = dict(os.environ)
    if (code or WORKER_CODE) != "source":
        env.pop("PYTHONPATH", None)
    return env


def worker_build(code: str | None = None) -> str:
    """What a server process started as ours are runs: "compiled", "pure" or "mixed" (buildinfo.build());
    raises TargetError when xen9p is not importable there (--code installed without an installed xen9p)."""
    code = code or WORKER_CODE
    r = subprocess.run([sys.executable, "-c", "from xen9p_common.buildinfo import build; print(build())"],
                       cwd=worker_cwd(code), env=worker_env(code), capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise TargetError(f"xen9p is not importable by {sys.executable} as {code} code: "
                          f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    return r.stdout.strip()


START_DEADLINE = 20.0


class TargetError(Exception):
    """A server could not be started; the families using it are skipped with this reason."""


def wait_for(cond, deadline: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll a condition (a file appearing) until the deadline; fail early if proc died."""
    end = time.monotonic() + deadline
    while True:
        v = cond()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise TargetError(f"{what}: process exited with {proc.returncode}\n{tail}")
        if time.monotonic() > end:
            raise TargetError(f"{what}: not ready within {deadline} s")
        time.sleep(0.02)


def stop_process(proc: subprocess.Popen, grace: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
    """Ask with `sig`, SIGKILL after `grace` seconds; the exit status (-9 when it had to be killed)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)
    return proc.returncode


def diod_missing() -> str | None:
    if not os.path.exists(DIOD):
        return f"diod is not installed ({DIOD}; apt-get install diod)"
    if os.geteuid() != 0:
        return "diod needs root to serve attaches as uid 0"
    return None


def xen9p_socket_missing() -> str | None:
    r = subprocess.run([sys.executable, "-m", "xen9p_worker", "--help"], cwd=worker_cwd(), env=worker_env(),
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or "--listen" not in r.stdout:
        return "xen9p_worker has no socket transport (`python -m xen9p_worker --help` lacks --listen)"
    return None


class SocketServer:
    """One server process on a Unix socket, exporting `export`. kind: "xen9p" or "diod"."""

    def __init__(self, kind: str, base: Path, export: Path, *, security_model: str = "passthrough") -> None:
        self.kind = kind
        self.export = export
        self.sock = base / f"{kind}.sock"
        self.log = base / f"{kind}.log"
        if kind == "diod":
            why = diod_missing()
            if why:
                raise TargetError(why)
            # As tests/acceptance and the lab script: no auth, no config file, aname = export path.
            cmd = [DIOD, "-f", "-n", "-c", "/dev/null", "-e", str(export), "-l", str(self.sock), "-L", "stderr"]
            self.aname = str(export)
        else:
            cmd = [sys.executable, "-m", "xen9p_worker", "--listen", f"unix:{self.sock}", "--export", str(export),
                   "--security-model", security_model]
            self.aname = ""
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=worker_cwd(),
                                         env=worker_env(), start_new_session=True)
        wait_for(self.sock.exists, START_DEADLINE, f"{kind} on {self.sock}", self.proc, self.log)

    @property
    def name(self) -> str:
        return "diod (C)" if self.kind == "diod" else "xen9p socket"

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    def channels(self, n: int) -> list[ChannelSpec]:
        return [ChannelSpec("socket", {"path": str(self.sock)}) for _ in range(n)]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def dead_reason(self) -> str | None:
        return None if self.alive() else f"{self.name} exited with {self.proc.returncode}"

    def close(self) -> None:
        stop_process(self.proc)


def ring_missing() -> str | None:
    """None if ring workers and the sim platform are importable, else why the ring path is skipped."""
    try:
        import zmq  # noqa: F401

        from xen9p_common.platform.sim.evtchn import SimEventChannels  # noqa: F401
        from xen9p_common.platform.sim.grants import SimDomainMemory  # noqa: F401
        from xen9p_worker import ring_main  # noqa: F401
        from xen9p_worker.shared.device_state import DeviceState  # noqa: F401
    except ImportError as e:
        return f"ring path unavailable: {e}"
    if not os.path.isdir("/dev/shm"):
        return "no /dev/shm for the device state"
    return None


class RingDevice:
    """One simulated 9pfs device with `num_rings` rings, served by one worker process per ring.

    The bench plays the guest kernel (grants the ring pages; the load processes own the ports)
    and the supervisor's small part (device state, worker argv, the "ready" messages); xen9pd
    itself is not involved. Workers are pinned round-robin to the CPUs, as xen9pd does.
    """

    GUEST = 7

    def __init__(self, base: Path, export: Path, num_rings: int, *, order: int = 9,
                 msize_cap: int = 512 * 1024 + 24, security_model: str = "passthrough", threads: int = 8) -> None:
        import uuid

        import zmq

        from xen9p_common.platform.sim.grants import SimDomainMemory
        from xen9p_common.ring import Intf
        from xen9p_worker.shared.device_state import DeviceState

        self.base, self.export, self.num_rings, self.order = base, export, num_rings, order
        self.security_model, self.threads = security_model, threads
        self.sim_dir = Path(tempfile.mkdtemp(prefix=f"sim-{num_rings}-", dir=base))
        self.name = f"xen9p-bench-{uuid.uuid4().hex[:12]}"
        self.procs: list[subprocess.Popen] = []
        self.ds = self.mem = self.ctx = self.router = None
        self.specs: list[ChannelSpec] = []
        self.builds: set[str] = set()  # what the workers said they run (xen9p_common.buildinfo.build())
        try:
            self.ds = DeviceState.create(self.name, max_fids=4096, max_open_files=0, max_space_mb=0,
                                         export=str(export), security_model=security_model,
                                         msize_cap=msize_cap, num_rings=num_rings)
            n = 1 << order
            self.mem = SimDomainMemory(str(self.sim_dir), self.GUEST, num_rings * (1 + n) + 8)
            self.refs = []
            for _ in range(num_rings):
                frames = sorted(self.mem.alloc_pages(1 + n))
                intf_ref = self.mem.grant_access(frames[0], 0)
                data_refs = [self.mem.grant_access(f, 0) for f in frames[1:]]
                view = self.mem.pages_view(frames[0], 1)
                Intf(view).setup(order, data_refs)
                view.release()
                self.refs.append(intf_ref)
                self.specs.append(ChannelSpec("ring", {
                    "sim_dir": str(self.sim_dir), "domid": self.GUEST, "intf_frame": frames[0],
                    "data_frame": frames[1], "order": order, "backend_domid": 0}))
            self.ctx = zmq.Context()
            self.router = self.ctx.socket(zmq.ROUTER)
            self.endpoint = f"ipc://{self.sim_dir}/sup.sock"
            self.router.bind(self.endpoint)
        except BaseException:
            self.close()
            raise

    def start_workers(self, ports: list[int], deadline: float = START_DEADLINE) -> None:
        """Spawn one worker per ring (ports: the frontend's, one per ring) and wait for each "ready"."""
        import zmq

        from xen9p_common import control

        cpus = sorted(os.sched_getaffinity(0))
        for ring, (ref, port) in enumerate(zip(self.refs, ports)):
            argv = [sys.executable, "-m", "xen9p_worker", "ring", "--platform", "sim",
                    "--sim-dir", str(self.sim_dir), "--domid", str(self.GUEST), "--devid", "0",
                    "--ring", str(ring), "--ring-ref", str(ref), "--evtchn", str(port), "--state", self.name,
                    "--export", str(self.export), "--security-model", self.security_model,
                    "--supervisor", self.endpoint, "--threads", str(self.threads)]
            log = open(self.sim_dir / f"worker-{ring}.log", "wb")
            cpu = cpus[ring % len(cpus)]
            self.procs.append(subprocess.Popen(argv, cwd=worker_cwd(), env=worker_env(), stdout=log,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, {cpu})))
            log.close()
        want = {p.pid for p in self.procs}
        end = time.monotonic() + deadline
        while want:
            for ring, p in enumerate(self.procs):
                if p.poll() is not None:
                    raise TargetError(f"ring worker {ring} exited with {p.returncode}: {self.log_tail(ring)}")
            left = end - time.monotonic()
            if left <= 0:
                raise TargetError(f"ring workers not ready within {deadline} s")
            if self.router.poll(int(min(left, 0.2) * 1000)):
                _, raw = self.router.recv_multipart()
                msg = control.parse_worker_msg(raw)
                if msg.get("type") == control.W_READY:
                    want.discard(msg.get("pid"))
                    self.builds.add(msg.get("build", "unknown"))
        self.drain()

    def drain(self) -> None:
        """Drop heartbeats and stats (we read CPU and RSS with psutil, not from the workers)."""
        import zmq
        while self.router is not None and self.router.poll(0):
            self.router.recv_multipart(zmq.NOBLOCK)

    def log_tail(self, ring: int) -> str:
        try:
            return (self.sim_dir / f"worker-{ring}.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def dead_reason(self) -> str | None:
        for ring, p in enumerate(self.procs):
            if p.poll() is not None:
                last = self.log_tail(ring).strip().splitlines()[-1:] or [""]
                return f"ring worker {ring} exited with {p.returncode}: {last[0][-300:]}"
        return None

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs = []
        if self.router is not None:
            self.router.close(0)
            self.router = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        if self.mem is not None:
            self.mem.destroy()
            self.mem = None
        if self.ds is not None:
            self.ds.close()
            self.ds.unlink()
            self.ds = None


def open_ring(base: Path, export: Path, n: int, msize: int):
    """A RingDevice of n rings with its workers serving, and a load pool (one process per ring)
    that negotiated `msize` and attached: (device, pool). device.msize is what was granted."""
    dev = RingDevice(base, export, n)
    pool = None
    try:
        pool = LoadPool(dev.specs, tag_stride=n, timeout=60.0)
        dev.start_workers(pool.call_all("port"))
        pool.server_dead = dev.dead_reason
        # Tversion travels on ring NOTAG % n (as Linux's), Tattach on ring 0; fids are device-wide.
        dev.msize = pool.call(0xFFFF % n, "version", msize)
        pool.call(0, "attach", ("", "root"))
        return dev, pool
    except BaseException:
        if pool is not None:
            pool.close()
        dev.close()
        raise
