"""Is a process alive? (Signal 0, with zombies counted as dead: their fds and locks are gone.)"""
from __future__ import annotations

import os


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
