"""Soak: 8 devices x 2 rings under the verified mixed workload for a while; resources must stay flat.

`python -m tests.e2e.soak --seconds 600` is the long run; the CI test runs 25 s. Checks: no guest
error, every effect verified on the host, every request answered once; worker RSS growth after the
warm-up (the first fifth of the run, at least 10 s of a short run) below 5 %; worker fd counts flat (at most +8 per worker, fds
cached for open fids come and go); after teardown no worker process and no /dev/shm segment left.
"""
from __future__ import annotations

import argparse
import glob
import sys
import time

import psutil

from tests.e2e.real_guest import DEADLINE, RealGuest, World, ring, shut_down
from tests.e2e.verified_load import VerifiedLoad, report
from tests.waiting import wait_for
from xen9p_supervisor.devstate import segment_name

SAMPLE_EVERY_OPS = 400


def _sample(daemon, names: list[str]) -> dict[str, tuple[int, int, int]]:
    out = {}
    for n in names:
        pid = ring(daemon, n)["pid"]
        p = psutil.Process(pid)
        out[n] = (pid, p.memory_info().rss, p.num_fds())
    return out


def soak(seconds: float, devices: int = 8, log=print) -> dict:
    world = World("soak")
    gs: list[RealGuest] = []
    loads: list[VerifiedLoad] = []
    try:
        for i in range(devices):
            g = RealGuest(world, 60 + i).mount()
            gs.append(g)
            loads.append(VerifiedLoad(g.client, g.root, g.export, threads=1, seed=i).start())
        d = world.daemon
        # This daemon's device segments only: other jobs use /dev/shm too.
        segs = [f"/dev/shm/{segment_name(g.domid, 0, d.proc.pid, '*')}" for g in gs]
        assert all(glob.glob(p) for p in segs), "device segments not where expected"
        names = [f"dom{g.domid}/dev0/ring{r}" for g in gs for r in (0, 1)]
        total = lambda: sum(ld.ops for ld in loads)  # noqa: E731
        t0 = time.monotonic()
        warm_end = t0 + max(seconds / 5, min(10.0, seconds / 2))  # short runs: RSS settles in ~10 s
        warm = last = None
        samples = 0
        while time.monotonic() < t0 + seconds:
            target = total() + SAMPLE_EVERY_OPS
            wait_for(lambda: total() >= target or any(ld.errors for ld in loads), DEADLINE * 3, "soak progress")
            assert not any(ld.errors for ld in loads), [e for ld in loads for e in ld.errors]
            last = _sample(d, names)
            samples += 1
            if warm is None and time.monotonic() >= warm_end:
                warm = last
        if warm is None:
            warm = last
        for ld in loads:
            ld.stop()
        errors = [e for ld in loads for e in ld.errors]
        wrong = [b for ld in loads for b in ld.verify()]
        growth = {n: (last[n][1] - warm[n][1]) / warm[n][1] for n in names if last[n][0] == warm[n][0]}
        fd_growth = {n: last[n][2] - warm[n][2] for n in names if last[n][0] == warm[n][0]}
        restarts = sum(ring(d, n)["restarts"] for n in names)
        pids = [last[n][0] for n in names]
        result = {"seconds": round(time.monotonic() - t0, 1), "devices": devices, "rings": len(names),
                  "ops": total(), "samples": samples, "guest_errors": errors, "wrong": wrong,
                  "unanswered": sum(ld.sent - ld.replies for ld in loads),
                  "stray_replies": sum(len(ld.stray) for ld in loads), "restarts": restarts,
                  "rss_growth_max_pct": round(100 * max(growth.values()), 2) if growth else None,
                  "rss_mib_last_max": round(max(v[1] for v in last.values()) / 2**20, 1),
                  "fd_growth_max": max(fd_growth.values()) if fd_growth else None}
    finally:
        shut_down(loads, gs, world)  # asserts no process of the world is left
    result["workers_left"] = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    result["segments_left"] = sorted(f for p in segs for f in glob.glob(p))
    return result


def check(r: dict) -> None:
    assert not r["guest_errors"], r["guest_errors"][:5]
    assert not r["wrong"], r["wrong"][:10]
    assert r["unanswered"] == 0 and r["stray_replies"] == 0, r
    assert r["restarts"] == 0, f"{r['restarts']} worker restarts during the soak"
    assert r["rss_growth_max_pct"] is not None and r["rss_growth_max_pct"] < 5, f"RSS grew {r['rss_growth_max_pct']} %"
    assert r["fd_growth_max"] <= 8, f"a worker's fd count grew by {r['fd_growth_max']}"
    assert not r["workers_left"], f"workers left after teardown: {r['workers_left']}"
    assert not r["segments_left"], f"shm segments left after teardown: {r['segments_left']}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.e2e.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--devices", type=int, default=8)
    args = ap.parse_args(argv)
    r = soak(args.seconds, args.devices)
    return report(r, check, f"{r['devices']} devices x 2 rings, {r['seconds']} s, {r['ops']} verified guest ops, "
                            f"RSS growth after warm-up <= {r['rss_growth_max_pct']} %, fd growth <= {r['fd_growth_max']}")


if __name__ == "__main__":
    sys.exit(main())
