"""One measurement: prepare every load process, snapshot server CPU, run, snapshot, combine into a Row.

Rows are plain dicts-to-be (dataclass) so the report and the JSON see exactly the same figures.
"""
from __future__ import annotations

from array import array
from dataclasses import asdict, dataclass, field

import psutil

from .loadgen import LoadError, LoadPool


@dataclass
class Row:
    """One figure. rate is units per second (ops, pairs, files, entries, or bytes)."""

    family: str
    target: str
    op: str
    unit: str
    rings: int = 0            # rings (ring path) or connections (socket path); 0 = not applicable
    depth: int = 0            # requests in flight per ring / connection
    size: int = 0             # bytes per Tread/Twrite, 0 for metadata ops
    rate: float = 0.0
    mb_s: float = 0.0         # for data ops: 1e6 bytes per second
    iters: int = 0
    requests: int = 0
    seconds: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    server_cpu_us: float = 0.0      # server CPU time per iteration (all worker processes summed)
    server_cpu_us_req: float = 0.0  # the same per 9P request
    server_cpu_util: float = 0.0    # server CPU seconds per wall second (cores busy)
    client_cpu_us: float = 0.0      # load generator CPU per iteration
    client_cpu_util: float = 0.0
    rss_mb: float = 0.0             # largest server process RSS at the end
    note: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of the processes, summed (a gone process counts nothing)."""
    user = system = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        user, system = user + t.user, system + t.system
    return user, system


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_split(pids))


def max_rss_mb(pids: list[int]) -> float:
    best = 0
    for pid in pids:
        try:
            best = max(best, psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            pass
    return best / 1e6


def percentile(sorted_vals, q: float) -> float:
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


def run_load(pool: LoadPool, server_pids: list[int], row: Row, opname: str, params: dict,
             duration: float, max_iters: int) -> Row:
    """Measure `opname` at row.depth per load process over every process of the pool."""
    pool.call_all("prepare", (opname, row.depth, params))
    try:
        c0 = cpu_seconds(server_pids)
        results = pool.call_all("go", (duration, max_iters))
        c1 = cpu_seconds(server_pids)
    finally:
        pool.call_all("finish")
    errors = [r["error"] for r in results if r.get("error")]
    if errors:
        raise LoadError(errors[0])
    wall = max(r["wall"] for r in results)
    units = sum(r["units"] for r in results)
    iters = sum(r["iters"] for r in results)
    reqs = sum(r["requests"] for r in results)
    lat = array("d")
    for r in results:
        lat.frombytes(r["lat"])
    lat = sorted(lat)
    row.seconds = wall
    row.iters, row.requests = iters, reqs
    row.rate = units / wall if wall > 0 else 0.0
    if row.unit == "bytes":
        row.mb_s = row.rate / 1e6
    row.p50_us = percentile(lat, 0.50) * 1e6
    row.p99_us = percentile(lat, 0.99) * 1e6
    scpu = c1 - c0
    ccpu = sum(r["cpu"] for r in results)
    if iters:
        row.server_cpu_us = scpu / iters * 1e6
        row.client_cpu_us = ccpu / iters * 1e6
    if reqs:
        row.server_cpu_us_req = scpu / reqs * 1e6
    if wall > 0:
        row.server_cpu_util = scpu / wall
        row.client_cpu_util = ccpu / wall
    row.rss_mb = max_rss_mb(server_pids)
    return row
