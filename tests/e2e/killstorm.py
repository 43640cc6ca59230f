"""Kill storm: 4 guests x 2 rings under a verified workload, ring workers SIGKILLed at random moments.

`python -m tests.e2e.killstorm --kills 50` is the long run; the CI test runs 10 kills. A kill moment
is drawn as "after N more completed guest operations" (no timers); each kill waits until the ring
serves again with a new worker (recovery: kill -> the daemon reports the ring running with a new pid,
polled every 5 ms) before the next is drawn.

Checks: no guest-visible error, every request answered exactly once (Load's counters), every write,
append, create, rename and unlink applied exactly once (VerifiedLoad.verify on the host), every kill
counted as a crash restart by the daemon.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import time

from tests.e2e.real_guest import DEADLINE, RealGuest, World, ring, shut_down
from tests.e2e.verified_load import VerifiedLoad, report
from tests.waiting import wait_for
from xen9p_common.xenbus import XenbusState

POLL = 0.005  # recovery polling period: the figures' resolution


def _recovered(daemon, name: str, old_pid: int) -> float:
    """Wait for ring `name` to run a new worker; when that was first seen (monotonic)."""
    def serving() -> bool:
        r = ring(daemon, name)
        return r["pid"] not in (None, old_pid) and r["state"] == "running"
    wait_for(serving, DEADLINE, f"{name} serving again after its worker was killed", interval=POLL)
    return time.monotonic()


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def storm(kills: int, guests: int = 4, seed: int = 1, log=print, **settings) -> dict:
    """`settings`: xen9pd settings for the World (worker_cmd, to run another build of the workers).

    The storm kills serving workers as soon as they serve again; xen9pd's crash-loop guard would
    rightly give up on a ring whose workers died three times within `startsecs` of starting
    (how often the same ring draws three quick kills depends on how fast workers start), so
    startsecs is 0 here: only a death before the worker is ready counts as a failed start.
    """
    rnd = random.Random(seed)
    world = World("ks", **{"startsecs": 0.0, **settings})
    gs: list[RealGuest] = []
    loads: list[VerifiedLoad] = []
    try:
        for i in range(guests):
            g = RealGuest(world, 21 + i).mount()
            gs.append(g)
            loads.append(VerifiedLoad(g.client, g.root, g.export, threads=2, seed=seed * 100 + i).start())
        d = world.daemon
        names = [f"dom{g.domid}/dev0/ring{r}" for g in gs for r in (0, 1)]
        total = lambda: sum(ld.ops for ld in loads)  # noqa: E731
        _wait_ops(loads, total() + 50, "load under way")
        recov: list[float] = []
        killed: dict[str, int] = {}
        for k in range(kills):
            _wait_ops(loads, total() + rnd.randrange(5, 80), f"guest ops before kill {k + 1}")
            name = rnd.choice(names)
            old = ring(d, name)["pid"]
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            recov.append(_recovered(d, name, old) - t0)
            killed[name] = killed.get(name, 0) + 1
            if (k + 1) % 10 == 0:
                log(f"killstorm: {k + 1}/{kills} kills, {total()} guest ops so far")
        _wait_ops(loads, total() + 50, "load progressing after the last kill")
        for ld in loads:
            ld.stop()
        errors = [e for ld in loads for e in ld.errors]
        stray = sum(len(ld.stray) for ld in loads)
        unanswered = sum(ld.sent - ld.replies for ld in loads)
        wrong = [b for ld in loads for b in ld.verify()]
        crashes = {n: ring(d, n)["exits"].get("crash", 0) for n in names}
        connected = all(g.be_state() == XenbusState.Connected for g in gs)
        builds = sorted({str(ring(d, n).get("build")) for n in names})
        ops: dict[str, int] = {}
        for ld in loads:
            for op, n in ld.counts.items():
                ops[op] = ops.get(op, 0) + n
        return {"kills": kills, "guests": guests, "rings": len(names), "ops": ops, "guest_errors": errors,
                "stray_replies": stray, "unanswered": unanswered, "wrong": wrong,
                "crashes_counted": crashes, "killed": killed, "connected": connected, "builds": builds,
                "recovery_p50_ms": round(1000 * statistics.median(recov), 1) if recov else None,
                "recovery_p99_ms": round(1000 * percentile(recov, 99), 1) if recov else None,
                "recovery_max_ms": round(1000 * max(recov), 1) if recov else None}
    finally:
        shut_down(loads, gs, world)


def _wait_ops(loads, target: int, what: str) -> None:
    wait_for(lambda: sum(ld.ops for ld in loads) >= target or any(ld.errors for ld in loads), DEADLINE * 3, what)
    errs = [e for ld in loads for e in ld.errors]
    assert not errs, errs


def check(result: dict) -> None:
    """The storm's pass criteria (raises AssertionError naming what failed)."""
    assert not result["guest_errors"], result["guest_errors"][:5]
    assert result["stray_replies"] == 0, "replies for tags not outstanding (answered twice?)"
    assert result["unanswered"] == 0, f"{result['unanswered']} requests never answered"
    assert not result["wrong"], result["wrong"][:10]
    assert result["connected"], "a device left Connected"
    for name, n in result["killed"].items():
        assert result["crashes_counted"][name] == n, f"{name}: {n} kills, daemon counted {result['crashes_counted'][name]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.e2e.killstorm", description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--guests", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    r = storm(args.kills, args.guests, args.seed)
    return report(r, check, f"{args.kills} SIGKILLs, 0 guest-visible errors, 0 lost/doubled/torn effects, "
                            f"recovery p50 {r['recovery_p50_ms']} ms p99 {r['recovery_p99_ms']} ms")


if __name__ == "__main__":
    sys.exit(main())
