"""ring: the real path, simulated guest rings -> one ring worker process per ring -> local directory.

For each ring count: one device, its workers, one load process per ring; every op at 1 and 16 in flight per ring.
"""
from __future__ import annotations

from ..loadgen import LoadError
from ..runner import Context, op_matrix, run_matrix
from ..targets import TargetError, open_ring, ring_missing

NAME = "ring"
MSIZE = 512 * 1024 + 24  # the worker's cap: a whole 512 KiB Tread fits (ring order 9: 1 MiB per half)
RESTARTS = 3  # fresh devices per ring count after a worker died, so one failure voids one figure only


def missing(ctx: Context) -> str | None:
    return ring_missing()




def _one(ctx: Context, n: int) -> None:
    p = ctx.profile
    work = [(depth, item) for depth in p.depths for item in op_matrix(p)]
    restarts = 0
    while work:
        try:
            dev, pool = open_ring(ctx.base, ctx.export, n, MSIZE)
        except (TargetError, LoadError) as e:
            ctx.skip(NAME, f"{n} rings", f"device did not start: {e}")
            return
        broken = None
        try:
            while work:
                depth, item = work.pop(0)
                if not run_matrix(ctx, NAME, f"ring x{n}", pool, dev.pids, n, (depth,), [item], dev.msize,
                                  dev.alive):
                    broken = "a load process lost its ring"
                    break
        except LoadError as e:
            broken = str(e)
        finally:
            dead = dev.dead_reason() or broken
            pool.close()
            dev.close()
        if work and dead:
            restarts += 1
            if restarts > RESTARTS:
                ctx.skip(NAME, f"{n} rings: {len(work)} figures", f"workers died {restarts} times: {dead}")
                return
            ctx.log(f"ring x{n}: a worker died ({dead}); fresh device for the remaining {len(work)} figures")


def run(ctx: Context) -> None:
    for n in ctx.profile.rings:
        _one(ctx, n)
