"""limits: memcpy through shared memory and the bare syscall behind each 9P op, in one Python thread.

These are the ceilings the served figures are read against (Python's per-call overhead, ~0.1-0.3 µs, included).
"""
from __future__ import annotations

import mmap
import os
import time

from ..measure import Row
from ..runner import UNITS, Context

NAME = "limits"


def missing(ctx: Context) -> str | None:
    return None


def _loop(fn, duration: float, max_iters: int) -> tuple[int, float, float]:
    """Call fn() in batches until duration; returns (iterations, wall seconds, cpu seconds)."""
    n = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    end = t0 + duration
    while n < max_iters:
        for _ in range(64):
            fn()
        n += 64
        if time.perf_counter() >= end:
            break
    return n, time.perf_counter() - t0, time.process_time() - c0


def _row(ctx: Context, target: str, op: str, size: int, n: int, wall: float, cpu: float, per_iter: int = 1,
         note: str = "") -> None:
    name, unit = UNITS[op] if op in UNITS else (op, "bytes")
    units = n * per_iter
    row = Row(family=NAME, target=target, op=name, unit=unit, rings=1, depth=1, size=size,
              rate=units / wall, iters=n, requests=n, seconds=wall, p50_us=wall / n * 1e6,
              client_cpu_us=cpu / n * 1e6, client_cpu_util=cpu / wall, note=note)
    if unit == "bytes":
        row.mb_s = row.rate / 1e6
    ctx.add(row)


def _copy_between(ctx: Context, op: str, size: int, src_size: int, dst_size: int, note: str) -> None:
    """Time copying `size` bytes from a `src_size` MAP_SHARED region into a `dst_size` one (like a
    ring half and the guest buffer), cycling over both when they are bigger than `size`."""
    src = mmap.mmap(-1, src_size, mmap.MAP_SHARED)
    dst = mmap.mmap(-1, dst_size, mmap.MAP_SHARED)
    for off in range(0, src_size, 1 << 20):
        src[off:off + min(1 << 20, src_size - off)] = os.urandom(min(1 << 20, src_size - off))
    sv, dv = memoryview(src), memoryview(dst)
    chunks, slots = src_size // size, dst_size // size
    state = [0]
    if chunks == slots == 1:
        def copy():  # the same buffers every time: no slicing in the timed loop
            dv[:] = sv
    else:
        def copy():
            i = state[0]
            d = (i % slots) * size
            s = (i % chunks) * size
            dv[d:d + size] = sv[s:s + size]
            state[0] = i + 1

    try:
        n, wall, cpu = _loop(copy, ctx.profile.limit_duration, 10_000_000)
    finally:
        sv.release()
        dv.release()
        src.close()
        dst.close()
    _row(ctx, "limit: memcpy", op, size, n, wall, cpu, per_iter=size, note=note)


def memcpy(ctx: Context) -> None:
    for size in sorted(set(ctx.profile.data_sizes) | {512 * 1024}):
        _copy_between(ctx, "memcpy", size, size, size, "shared mmap -> shared mmap, same buffers (cache-resident)")
    # As a Tread moves bytes: 512 KiB chunks of a source as big as the bench's page-cached file
    # (beyond the last-level cache) into a destination as big as a ring half.
    size = 512 * 1024
    span = max(ctx.profile.read_file_mb << 20, 4 * size)
    _copy_between(ctx, "memcpy-stream", size, span, 1 << 20,
                  f"{size >> 10} KiB chunks of a {span >> 20} MiB shared mmap -> a 1 MiB one (like a Tread)")


def syscalls(ctx: Context) -> None:
    p = ctx.profile
    fx = ctx.fixtures
    root = os.open(ctx.export, os.O_RDONLY | os.O_DIRECTORY)
    try:
        small_dir, small_name = os.path.split(fx["small_file"])
        sd = os.open(small_dir, os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
        cd = os.open(fx["create_dir"], os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
        try:
            n, w, c = _loop(lambda: os.stat(small_name, dir_fd=sd, follow_symlinks=False), p.limit_duration, 10**7)
            _row(ctx, "limit: syscall", "getattr", 0, n, w, c, note="fstatat")

            def walkclunk():
                os.close(os.open(small_name, os.O_PATH | os.O_NOFOLLOW, dir_fd=sd))
            n, w, c = _loop(walkclunk, p.limit_duration, 10**7)
            _row(ctx, "limit: syscall", "walkclunk", 0, n, w, c, note="openat(O_PATH) + close")

            block = b"x" * 4096

            def create():
                fd = os.open("lim", os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644, dir_fd=cd)
                os.write(fd, block)
                os.close(fd)
                os.unlink("lim", dir_fd=cd)
            n, w, c = _loop(create, p.limit_duration, 10**7)
            _row(ctx, "limit: syscall", "createwriteunlink", 0, n, w, c, note="openat(O_CREAT)+write+close+unlinkat")

            entries = fx["big_entries"]

            def readdir():
                with os.scandir(os.path.join(ctx.export, fx["big_dir"])) as it:
                    for _ in it:
                        pass
            n, w, c = _loop_few(readdir, p.limit_duration)
            _row(ctx, "limit: syscall", "readdir", 0, n, w, c, per_iter=entries, note="getdents64 (scandir)")
        finally:
            os.close(sd)
            os.close(cd)
        fd = os.open(fx["data_file"], os.O_RDONLY, dir_fd=root)
        wfd = os.open(os.path.join(fx["write_dir"], "lim"), os.O_CREAT | os.O_RDWR, 0o644, dir_fd=root)
        try:
            for size in p.data_sizes:
                buf = bytearray(size)
                span = max(fx["data_size"] // size, 1)
                state = [0]

                def pread():
                    os.preadv(fd, [buf], (state[0] % span) * size)
                    state[0] += 1
                n, w, c = _loop(pread, p.limit_duration, 10**7)
                _row(ctx, "limit: syscall", "read", size, n, w, c, per_iter=size, note="preadv, page cache")
                wspan = max(fx["write_span"] // size, 1)

                def pwrite():
                    os.pwritev(wfd, [buf], (state[0] % wspan) * size)
                    state[0] += 1
                n, w, c = _loop(pwrite, p.limit_duration, 10**7)
                _row(ctx, "limit: syscall", "write", size, n, w, c, per_iter=size, note="pwritev, page cache")
        finally:
            os.close(fd)
            os.close(wfd)
            os.unlink(os.path.join(fx["write_dir"], "lim"), dir_fd=root)
    finally:
        os.close(root)


def _loop_few(fn, duration: float) -> tuple[int, float, float]:
    """For slow iterations (a whole directory): one at a time, at least three."""
    n = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < duration:
        fn()
        n += 1
    return n, time.perf_counter() - t0, time.process_time() - c0


def run(ctx: Context) -> None:
    memcpy(ctx)
    syscalls(ctx)
