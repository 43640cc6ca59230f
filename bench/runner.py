"""The run: a shared context (profile, export, rows, skips) and the family loop with stated skip reasons.

Also the matrix helper the ring and socket families share: every op at every depth over one pool.
"""
from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .fixtures import op_params
from .loadgen import BROKEN, LoadError, LoadPool
from .measure import Row, run_load
from .profile import Profile

UNITS = {"getattr": ("Tgetattr", "ops"), "walkclunk": ("Twalk+Tclunk", "pairs"),
         "createwriteunlink": ("create+write4K+unlink", "files"), "readdir": ("Treaddir", "entries"),
         "read": ("Tread", "bytes"), "write": ("Twrite", "bytes")}


@dataclass
class Context:
    profile: Profile
    base: Path
    export: Path
    fixtures: dict
    rows: list[Row] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    verbose: bool = True
    started: float = field(default_factory=time.monotonic)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[bench {time.monotonic() - self.started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def skip(self, family: str, what: str, reason: str) -> None:
        self.log(f"skip {family}/{what}: {reason}")
        self.skipped.append({"family": family, "what": what, "reason": reason})

    def add(self, row: Row) -> None:
        self.rows.append(row)
        size = f" {row.size // 1024}K" if row.size else ""
        fig = f"{row.mb_s:9.1f} MB/s" if row.unit == "bytes" else f"{row.rate:9.0f} {row.unit}/s"
        self.log(f"{row.target:14s} {row.op}{size:6s} n={row.rings} d={row.depth:<2d} {fig}  "
                 f"p50 {row.p50_us:7.0f}us p99 {row.p99_us:7.0f}us  srv {row.server_cpu_us:6.1f}us/it  "
                 f"cli {row.client_cpu_us:6.1f}us/it  rss {row.rss_mb:5.1f}MB {row.note}")


def op_matrix(profile: Profile) -> list[tuple[str, int]]:
    """(op, size) in the order they run: small ops, then data ops by size."""
    out = [(op, 0) for op in profile.small_ops]
    for size in profile.data_sizes:
        out += [("read", size), ("write", size)]
    return out


def run_matrix(ctx: Context, family: str, target: str, pool: LoadPool, pids: list[int], n: int,
               depths, ops, msize: int, alive=lambda: True, extra: dict | None = None) -> bool:
    """Every (op, size) at every depth over this pool (n = rings or connections).

    False when the pool or the server broke (the remaining figures were not run)."""
    p = ctx.profile
    for depth in depths:
        for op, size in ops:
            name, unit = UNITS[op]
            row = Row(family=family, target=target, op=name, unit=unit, rings=n, depth=depth, size=size)
            if size and size > msize - 24:
                ctx.skip(family, f"{target} {name} {size}", f"does not fit msize {msize}")
                continue
            try:
                params = {**op_params(ctx.fixtures, op, size, msize), **(extra or {})}
                run_load(pool, pids, row, op, params, p.duration, p.max_iters)
            except LoadError as e:
                ctx.skip(family, f"{target} {name} {size} n={n} d={depth}", f"load failed: {e}")
                if not alive() or BROKEN in str(e):
                    return False
                continue
            ctx.add(row)
    return True


def run_families(ctx: Context, families, only: set[str] | None) -> None:
    for fam in families:
        if only and fam.NAME not in only:
            continue
        why = fam.missing(ctx)
        if why:
            ctx.skip(fam.NAME, "*", why)
            continue
        ctx.log(f"family {fam.NAME}: {fam.__doc__.strip().splitlines()[0]}")
        try:
            fam.run(ctx)
        except Exception as e:  # noqa: BLE001 - one broken family must not sink the others
            ctx.skip(fam.NAME, "*", f"failed: {type(e).__name__}: {e}")
            if ctx.verbose:
                traceback.print_exc()
