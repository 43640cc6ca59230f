"""Servers under test, started as real processes: xen9p's socket transport, diod, and ring workers.

Each target gives the load generator its channel specs and the bench the pids whose CPU and RSS count.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .loadgen import ChannelSpec

DIOD = "/usr/sbin/diod"
REPO = Path(__file__).resolve().parents[1]
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


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
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
    r = subprocess.run([sys.executable, "-m", "xen9p_worker", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
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
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO,
                                         start_new_session=True)
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

    def close(self) -> None:
        stop_process(self.proc)
