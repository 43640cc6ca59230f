"""Is a process alive? (Signal 0, with zombies counted as dead: their fds and locks are gone.) And a child
that dies with the process that started it."""
from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def _libc_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child between fork and exec (Popen's preexec_fn): `sig` reaches it when the thread that started it
    exits, so a parent that dies hard (SIGKILL) leaves no orphan behind. Only a syscall: no locks, no logging."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie; a pid we may not signal counts as alive."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return not os.path.isdir("/proc/self")  # no procfs: signal 0 is all we know
