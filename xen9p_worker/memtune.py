"""glibc malloc settings that keep a worker's RSS flat under large, short-lived buffers.

By default glibc gives each I/O thread its own arena and raises the mmap threshold after the
first large free, so the 100 KiB-512 KiB buffers of Treaddir/Twrite replies end up in arenas
that never shrink (measured: +14 MB RSS after twenty 10,000-entry directory reads). A fixed
threshold keeps such buffers in mmap (returned to the system on free), two arenas bound the
per-thread heaps, and a low trim threshold gives freed heap tops back.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("xen9p.memtune")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_malloc(mmap_threshold: int = 128 * 1024, trim_threshold: int = 256 * 1024,
                arena_max: int = 2) -> bool:
    """Apply the settings; False (and nothing changed) where the libc is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in
             ((M_ARENA_MAX, arena_max), (M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold)))
    if not ok:
        log.warning("mallopt refused a setting; RSS may grow under large buffers")
    return ok
