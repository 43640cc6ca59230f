"""Observers attached to running server processes: strace's syscall summary and py-spy's samples.

Both attach to processes that already serve (nothing is restarted under them) and are stopped with
SIGINT, which makes each write its summary. What they return is raw counts; bench/cost.py divides.
"""
from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .targets import stop_process

ATTACH_DEADLINE = 10.0

# One row of `strace -c`: % time, seconds, usecs/call, calls, [errors], syscall.
_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?([a-z_0-9]+)\s*$")
# One frame of py-spy's raw (collapsed) format: "function (file:line)".
_FRAME = re.compile(r"^(.*) \((.*):(\d+)\)$")


def strace_missing() -> str | None:
    return None if shutil.which("strace") else "strace is not installed (apt-get install strace)"


def pyspy_path() -> str | None:
    """py-spy on PATH, or beside this interpreter (a venv's bin/, not always on PATH)."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return shutil.which("py-spy") or (beside if os.access(beside, os.X_OK) else None)


def pyspy_missing() -> str | None:
    return None if pyspy_path() else "py-spy is not installed (pip install '.[bench]')"


def _tids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _traced(tid: int) -> bool:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1]) != 0
    except OSError:
        return True  # gone: nothing to wait for
    return False


def _stop(proc: subprocess.Popen, what: str) -> None:
    """SIGINT makes strace and py-spy write what they gathered; one that must be killed wrote nothing."""
    if stop_process(proc, grace=30, sig=signal.SIGINT) == -signal.SIGKILL:
        raise RuntimeError(f"{what} did not stop on SIGINT")


def _read_line(proc: subprocess.Popen, deadline: float) -> bytes:
    """The first line proc writes on stdout (b"" if it exits or says nothing within deadline)."""
    buf = b""
    end = time.monotonic() + deadline
    fd = proc.stdout.fileno()
    while b"\n" not in buf:
        left = end - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf


class Strace:
    """`strace -c -f` on every thread of `pids` until stop(); stop() returns {syscall: calls}."""

    def __init__(self, pids: list[int], out: Path) -> None:
        self.out = out
        cmd = ["strace", "-c", "-f", "-q", "-o", str(out)]
        for pid in pids:
            cmd += ["-p", str(pid)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        # Counting starts only once every thread is traced; until then calls would be missed.
        end = time.monotonic() + ATTACH_DEADLINE
        while not all(_traced(t) for pid in pids for t in _tids(pid)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"strace exited: {self.proc.stderr.read().decode(errors='replace')[-300:]}")
            if time.monotonic() > end:
                _stop(self.proc, "strace")
                raise RuntimeError("strace did not attach to every thread")
            time.sleep(0.01)

    def stop(self) -> tuple[Counter, Counter]:
        """(calls, errors) per syscall name."""
        _stop(self.proc, "strace")
        calls, errors = Counter(), Counter()
        for line in self.out.read_text().splitlines():
            m = _STRACE_ROW.match(line)
            if m and m.group(3) != "total":
                calls[m.group(3)] += int(m.group(1))
                if m.group(2):
                    errors[m.group(3)] += int(m.group(2))
        return calls, errors


class PySpy:
    """py-spy sampling every `pids` until stop(); stop() returns stacks.

    Only the thread holding the GIL is sampled (--gil): the samples are the interpreter's time
    (a thread blocked in poll() or recv() would otherwise count as busy); what the kernel does is
    the system CPU time, and strace says which calls.
    """

    def __init__(self, pids: list[int], out_dir: Path, rate: int = 1000) -> None:
        self.outs = [out_dir / f"pyspy-{pid}.txt" for pid in pids]
        exe = pyspy_path()
        self.procs = [subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(rate),
                                        "--format", "raw", "--nonblocking", "--gil", "-o", str(out)],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT)
                      for pid, out in zip(pids, self.outs)]
        # Each says "Sampling process ..." on stdout once it samples; counting starts after that.
        for p in self.procs:
            line = _read_line(p, ATTACH_DEADLINE)
            if b"Sampling" not in line:
                for q in self.procs:
                    _stop(q, "py-spy")
                raise RuntimeError(f"py-spy did not start: {line.decode(errors='replace')[-300:]}")

    def stop(self) -> Counter:
        """{stack (tuple of (function, file, line), outermost first): samples}."""
        for p in self.procs:
            _stop(p, "py-spy")
        stacks: Counter = Counter()
        for out in self.outs:
            if not out.exists():
                continue
            for line in out.read_text().splitlines():
                body, _, n = line.rpartition(" ")
                if not n.isdigit():
                    continue
                frames = []
                for f in body.split(";"):
                    m = _FRAME.match(f)
                    if m:
                        frames.append((m.group(1), m.group(2), int(m.group(3))))
                if frames:
                    stacks[tuple(frames)] += int(n)
        return stacks
