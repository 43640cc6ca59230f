"""ring: the real path, simulated guest rings -> one ring worker process per ring -> local directory.

For each ring count: one device, its workers, one load process per ring; every op at 1 and 16 in flight per ring.
"""
from __future__ import annotations

from ..loadgen import LoadPool
from ..runner import Context, op_matrix, run_matrix
from ..targets import RingDevice, TargetError, ring_missing

NAME = "ring"
MSIZE = 512 * 1024 + 24  # the worker's cap: a whole 512 KiB Tread fits (ring order 9: 1 MiB per half)
NOTAG = 0xFFFF


def missing(ctx: Context) -> str | None:
    return ring_missing()


def _one(ctx: Context, n: int) -> None:
    p = ctx.profile
    dev = RingDevice(ctx.base, ctx.export, n)
    pool = None
    try:
        pool = LoadPool(dev.specs, tag_stride=n, timeout=60.0)
        ports = pool.call_all("port")
        dev.start_workers(ports)
        pool.server_dead = dev.dead_reason
        # Tversion travels on ring NOTAG % n (as Linux's), Tattach on ring 0; fids are device-wide.
        msize = pool.call(NOTAG % n, "version", MSIZE)
        pool.call(0, "attach", ("", "root"))
        run_matrix(ctx, NAME, f"ring x{n}", pool, dev.pids, n, p.depths, op_matrix(p), msize, dev.alive)
        dev.drain()
        if not dev.alive():
            raise TargetError(dev.dead_reason())
    finally:
        if pool is not None:
            pool.close()
        dev.close()


def run(ctx: Context) -> None:
    for n in ctx.profile.rings:
        try:
            _one(ctx, n)
        except TargetError as e:
            ctx.skip(NAME, f"{n} rings", str(e))
