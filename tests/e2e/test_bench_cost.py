"""`python -m bench.cost`, short: per-op syscalls from strace and a per-layer split from py-spy.

No timing assertions. What must hold: the syscall counts match what the op does at least
(a Tgetattr is answered with an fstat-family call), and the layer split covers the server's user CPU.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_cost_profile_of_getattr_on_the_ring_and_the_socket(tmp_path):
    if not shutil.which("strace"):
        pytest.skip("strace is not installed (apt-get install strace)")
    from bench.probes import pyspy_missing
    why = pyspy_missing()
    if why:
        pytest.skip(why)
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, "-m", "bench.cost", "--ops", "getattr", "--targets", "ring,xen9p",
                        "--loads", "1x1", "--duration", "0.5", "--entries", "10", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"bench.cost failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-4000:]}"
    doc = json.loads(next(out.glob("cost-*.json")).read_text())
    figs = {f["target"]: f for f in doc["figures"]}
    assert set(figs) == {"ring", "xen9p socket"}, doc
    for f in figs.values():
        assert f["ops_s"] > 0 and f["cpu_us"] > 0, f
        assert f["build"] == "pure", f  # --code source (the default): this tree's .py files
        sc = f["syscalls_per_op"]
        # Every Tgetattr costs one stat of the file (fstat/newfstatat/statx, by libc).
        assert sum(v for k, v in sc.items() if "stat" in k) >= 0.9, sc
        assert f["layers_us"], f
        assert abs(sum(f["layers_us"].values()) - f["user_us"]) < 0.05 * f["user_us"] + 0.1, f
    # The socket transport reads requests with recv-family calls, the ring worker never does.
    sock = figs["xen9p socket"]["syscalls_per_op"]
    assert any(k.startswith("recv") or k == "read" for k in sock), sock
    assert (out / next(out.glob("cost-*.json")).name.replace(".json", ".md")).exists()


def test_wakeup_floor_reports_both_placements():
    """`python -m bench.wakeup`: the empty loop's CPU per round trip, one row per placement it could use."""
    import os
    r = subprocess.run([sys.executable, "-m", "bench.wakeup", "--trips", "2000"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [ln.split("|")[1:-1] for ln in r.stdout.splitlines() if ln.startswith("| one") or ln.startswith("| two")]
    want = ["one core"] + (["two cores"] if len(os.sched_getaffinity(0)) > 1 else [])
    assert [c.strip() for c, *_ in rows] == want, r.stdout
    for _, user, sys_, cpu, rtt in rows:
        assert float(cpu) == pytest.approx(float(user) + float(sys_), abs=0.11) and float(rtt) > 0, r.stdout
    bad = subprocess.run([sys.executable, "-m", "bench.wakeup", "--trips", "0"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--trips must be at least 1" in bad.stderr
