"""How much to measure: the quick profile (CI smoke, < 2 min on 2 cores) and the full one (< 15 min).

Every loop is bounded twice: by `duration` seconds and by `max_iters` iterations per load process.
"""
from __future__ import annotations

from dataclasses import dataclass

KiB = 1024


@dataclass(frozen=True)
class Profile:
    name: str
    rings: tuple[int, ...]
    depths: tuple[int, ...]
    data_sizes: tuple[int, ...]
    small_ops: tuple[str, ...]
    duration: float          # seconds per figure
    max_iters: int           # iterations per load process per figure
    readdir_entries: int
    read_file_mb: int        # the page-cached file Tread cycles over
    write_span_kb: int       # per-slot file span Twrite cycles over
    limit_duration: float
    socket_conns: tuple[int, ...]  # connections (load processes) for the socket peers
    socket_depth: int              # requests in flight per connection at the "loaded" point


FULL = Profile(
    name="full", rings=(1, 2, 4, 8), depths=(1, 16), data_sizes=(4 * KiB, 128 * KiB, 512 * KiB),
    small_ops=("getattr", "walkclunk", "createwriteunlink", "readdir"),
    duration=2.0, max_iters=2_000_000, readdir_entries=10_000, read_file_mb=64, write_span_kb=2048,
    limit_duration=0.5, socket_conns=(1, 2), socket_depth=8,
)

QUICK = Profile(
    name="quick", rings=(1, 2), depths=(1, 16), data_sizes=(4 * KiB, 512 * KiB),
    small_ops=("getattr", "walkclunk", "createwriteunlink", "readdir"),
    duration=0.4, max_iters=200_000, readdir_entries=2_000, read_file_mb=8, write_span_kb=1024,
    limit_duration=0.1, socket_conns=(2,), socket_depth=8,
)
