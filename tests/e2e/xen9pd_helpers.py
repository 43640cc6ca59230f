"""Harness for xen9pd end-to-end tests: a sim xenstored process, xen9pd as a process, a xenstore-level guest.

Every wait polls xenstore, the control socket or a log file against a deadline.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import zmq

from xen9p_common import control
from xen9p_common.platform import Transaction
from xen9p_common.platform.xswire import XsWireClient
from xen9p_supervisor import toolstack
from tests.waiting import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FAKE_WORKER = os.path.join(HERE, "fake_worker.py")

FAST = dict(heartbeat_timeout=1.0, ready_timeout=3.0, kill_grace=1.0, startsecs=1.0, startretries=2,
            backoff_initial=0.05, backoff_max=0.2, rescan_interval=0.5, close_timeout=3.0, metrics_interval=0.2,
            device_state="none")


def env_for_children() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class SimXenstored:
    def __init__(self, sim_dir: str) -> None:
        self.sock = os.path.join(sim_dir, "xenstored.sock")
        self.log = open(os.path.join(sim_dir, "xenstored.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "xen9p_sim.xenstore.xenstored",
                                      "--socket", self.sock], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env_for_children(), cwd=ROOT)
        wait_for(self._answers, 10, "sim xenstored to answer")
        assert self.proc.poll() is None, "sim xenstored died"

    def _answers(self) -> bool:
        # The socket can appear a moment before the server accepts for real (it may drop a client
        # accepted in that window), so wait for a whole request to succeed.
        if self.proc.poll() is not None:
            return True
        if not os.path.exists(self.sock):
            return False
        try:
            with XsWireClient(self.sock, timeout=2) as c:
                return c.read("/local/domain/0/domid") is not None
        except Exception:
            return False

    def client(self) -> XsWireClient:
        return XsWireClient(self.sock)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Xen9pd:
    """xen9pd --platform sim as a subprocess, with the fake worker and fast timers unless told otherwise."""

    def __init__(self, tmp: str, sim_dir: str, *, fake_modes: str = "", extra_env: dict | None = None,
                 args: list[str] | None = None, worker_cmd: str | None = None, wait_ready: bool = True,
                 wrapper: list[str] | None = None, **settings) -> None:
        """`wrapper`: argv prefix the daemon runs under (e.g. unshare for a private /dev/shm)."""
        self.tmp = tmp
        self.control = f"ipc://{tmp}/control.sock"
        conf = dict(FAST)
        conf.update(settings)
        conf.update(platform="sim", sim_dir=sim_dir, control=self.control, metrics=f"ipc://{tmp}/metrics.sock",
                    workers=f"ipc://{tmp}/workers.sock",
                    worker_cmd=worker_cmd or f"{sys.executable} {FAKE_WORKER}")
        self.config_path = os.path.join(tmp, "xen9pd.toml")
        with open(self.config_path, "w") as f:
            for k, v in conf.items():
                f.write(f"{k} = {json.dumps(v)}\n")
        self.log_path = os.path.join(tmp, "xen9pd.log")
        env = env_for_children()
        env["XEN9P_FAKE_MODES"] = fake_modes
        env.pop("NOTIFY_SOCKET", None)
        env.update(extra_env or {})
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen((wrapper or []) + [sys.executable, "-m", "xen9p_supervisor.xen9pd", "--config",
                                                          self.config_path] + (args or []), stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        if wait_ready:
            wait_for(lambda: self.proc.poll() is not None or self.ping(), 15, "xen9pd to answer ping")
            assert self.proc.poll() is None, "xen9pd exited:\n" + self.logs()

    def request(self, cmd: str, args: dict | None = None, timeout: float = 2.0) -> dict | None:
        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.connect(self.control)
            s.send(control.dumps(control.request(cmd, args)))
            if not s.poll(int(timeout * 1000)):
                return None
            return json.loads(s.recv())
        finally:
            s.close(0)

    def ping(self) -> bool:
        if not os.path.exists(self.control[len("ipc://"):]):
            return False
        r = self.request("ping", timeout=0.3)
        return bool(r and r.get("ok"))

    def status(self) -> dict:
        r = self.request("status")
        assert r and r["ok"], r
        return r["result"]

    def device(self, name: str) -> dict | None:
        for d in self.status()["devices"]:
            if d["name"] == name:
                return d
        return None

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        return wait_for(lambda: text in self.logs() and self.logs(), timeout, f"log line containing {text!r}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def xen9pd_world(tmp: str, **settings):
    """A sim xenstored, its dom0 client and xen9pd (fake workers unless told) in tmp: yields (xs, daemon)."""
    xsd = SimXenstored(tmp)
    xs = xsd.client()
    d = Xen9pd(tmp, tmp, **settings)
    try:
        yield xs, d
    finally:
        d.stop()
        xs.close()
        xsd.stop()


class Guest:
    """A xenstore-level frontend (domid N): does the handshake with made-up refs and ports."""

    def __init__(self, xs: XsWireClient, domid: int, devid: int = 0, kind: str = "xen_9pfs") -> None:
        self.xs, self.domid, self.devid, self.kind = xs, domid, devid, kind
        self.be = toolstack.backend_path(0, kind, domid, devid)
        self.fe = toolstack.frontend_path(domid, devid)
        self.name = f"dom{domid}/dev{devid}"

    def attach(self, path: str, tag: str = "share", introduce: bool = True, **kw) -> "Guest":
        if introduce and not self.xs.is_domain_introduced(self.domid):
            self.xs.introduce_domain(self.domid)
        toolstack.attach(self.xs, backend_domid=0, domid=self.domid, devid=self.devid, kind=self.kind,
                         path=path, tag=tag, **kw)
        return self

    def be_state(self) -> int | None:
        v = self.xs.read(self.be + "/state")
        return int(v) if v is not None and v.isdigit() else None

    def wait_be(self, *states: int, timeout: float = 10.0) -> int:
        return wait_for(lambda: self.be_state() in states and self.be_state(), timeout,
                        f"{self.name} backend state in {states} (now {self.be_state()})")

    def connect(self, num_rings: int = 2, refs: list | None = None, ports: list | None = None,
                wait: bool = True, version: str = "1") -> None:
        self.wait_be(2)
        refs = refs if refs is not None else [str(100 + i) for i in range(num_rings)]
        ports = ports if ports is not None else [str(10 + i) for i in range(num_rings)]

        def tx(t: Transaction) -> None:
            t.write(self.fe + "/version", version)
            t.write(self.fe + "/num-rings", str(num_rings))
            for i, r in enumerate(refs):
                t.write(f"{self.fe}/ring-ref{i}", str(r))
            for i, p in enumerate(ports):
                t.write(f"{self.fe}/event-channel-{i}", str(p))
            t.write(self.fe + "/state", "3")

        self.xs.transaction(tx)
        if wait:
            self.wait_be(4)
            self.xs.write(self.fe + "/state", "4")

    def close(self) -> None:
        self.xs.write(self.fe + "/state", "5")
        self.wait_be(5, 6)
        self.xs.write(self.fe + "/state", "6")
        self.wait_be(6)

    def reinit(self) -> None:
        self.xs.write(self.fe + "/state", "1")


def procs_with(marker: str) -> list:
    """Live processes whose command line mentions marker (our tmp dir): what must be gone after a test."""
    import psutil
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(marker in a for a in (p.info["cmdline"] or [])):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def ring(daemon: "Xen9pd", name: str) -> dict:
    """The status entry of ring `name` ("dom3/dev0/ring1") as xen9pctl reports it."""
    dev = daemon.device(name.rpartition("/")[0])
    assert dev is not None, name
    for r in dev["rings"]:
        if r["name"] == name:
            return r
    raise AssertionError(f"no ring {name} in {dev}")
