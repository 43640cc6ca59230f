"""glibc malloc settings that keep a worker's RSS flat under large, short-lived buffers.

By default glibc gives each I/O thread its own arena (up to 8 per core), and memory freed in an
arena mostly stays there: twenty reads of a 10,000-entry directory at msize 512 KiB grew a ring
worker by ~14 MB that it never gave back. Two arenas bound that; the Python threads hold the GIL
around nearly every allocation, so they hardly contend for them. (A fixed mmap threshold also
kept RSS flat but changed nothing measurable otherwise, so the dynamic one stays.)
XEN9P_MALLOC_TUNE=0 leaves glibc's defaults.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("xen9p.memtune")

M_ARENA_MAX = -8


def tune_malloc(arena_max: int = 2) -> bool:
    """Apply the setting; False (and nothing changed) where the libc is not glibc or
    XEN9P_MALLOC_TUNE=0 says not to."""
    if os.environ.get("XEN9P_MALLOC_TUNE", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_ARENA_MAX, arena_max) != 1:
        log.warning("mallopt(M_ARENA_MAX) refused; RSS may grow under large buffers")
        return False
    return True
