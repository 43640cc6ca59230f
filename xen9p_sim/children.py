"""Processes `xen9psim demo` starts, each in its own process group, stopped with a grace period.

Descendants that outlive their leader are reported and killed; GuestProc follows a guest's JSON progress lines.
"""
from __future__ import annotations

import json
import os
import threading

DEMO_TAG = "demo"


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env() -> dict:
    """The environment for processes we start: our package importable, no systemd notify socket."""
    env = dict(os.environ)
    root = repo_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("NOTIFY_SOCKET", None)
    return env


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (zombies excluded)."""
    import psutil
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.info["pid"]) == pgid:
                out.append(p.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
    return out


class Child:
    """A process we started in its own process group (so Ctrl-C in the terminal does not reach it), which gets
    SIGTERM if we die without cleaning up (SIGKILL): a demo's never-ending guests must not outlive it."""

    def __init__(self, name: str, argv: list[str], log_path: str, *, pipe_stdout: bool = False) -> None:
        import subprocess

        from xen9p_common.procs import die_with_parent
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if pipe_stdout else self._log,
                                     stderr=self._log, env=child_env(), cwd=repo_root(),
                                     start_new_session=True, preexec_fn=die_with_parent)
        self.pgid = self.proc.pid

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float) -> list[int]:
        """SIGTERM the group, SIGKILL after `grace`; returns pids that outlived their leader (then killed)."""
        import signal
        import subprocess
        if self.proc.poll() is None:
            try:
                os.killpg(self.pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        left = group_members(self.pgid)
        if left:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return left

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


class GuestProc(Child):
    """`xen9psim guest ... --progress` as a process; a thread reads its JSON lines."""

    def __init__(self, sim_dir: str, domid: int, model: str, workloads: str, seed: int, scale: int,
                 frontend: str = "linux", rounds: int = 1) -> None:
        import sys as _sys
        argv = [_sys.executable, "-m", "xen9p_sim.cli", "--sim-dir", sim_dir, "guest",
                "--domid", str(domid), "--tag", DEMO_TAG, "--seed", str(seed), "--scale", str(scale),
                "--frontend", frontend, "--rounds", str(rounds), "--progress", "run", workloads]
        super().__init__(f"dom{domid}", argv, os.path.join(sim_dir, f"guest{domid}.log"), pipe_stdout=True)
        self.domid, self.model, self.workloads, self.frontend = domid, model, workloads, frontend
        self.mounted: dict | None = None
        self.progress: dict = {"ops": 0, "bytes": 0, "errors": 0}
        self.summary: dict | None = None
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"demo-dom{domid}")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if "mounted" in msg:
                self.mounted = msg["mounted"]
            elif "progress" in msg:
                self.progress = msg["progress"]
            elif "summary" in msg:
                self.summary = msg["summary"]

    def finished(self) -> bool:
        return not self.alive() and not self._reader.is_alive()

    def wait_reader(self, timeout: float) -> None:
        self._reader.join(timeout)
