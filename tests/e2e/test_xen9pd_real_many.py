"""Eight devices at once with real ring workers, each running a workload; what xen9pctl shows about them.

status --json names every ring's pid and core, and each worker process really is pinned to that core.
"""
from __future__ import annotations

import json
import threading

import psutil
import pytest

from tests.e2e.real_guest import Load, RealGuest, World, xen9pctl
from tests.waiting import wait_for
from xen9p_sim.workloads import run_workload
from xen9p_common.xenbus import XenbusState

DEVICES = 8


@pytest.fixture(scope="module")
def world():
    w = World("many", metrics_interval=0.2)
    yield w
    w.close()


def test_eight_devices_serve_workloads_and_status_shows_pinned_rings(world):
    d = world.daemon
    guests: list[RealGuest] = []
    try:
        for i in range(DEVICES):
            guests.append(RealGuest(world, 20 + i, tag=f"t{i}", model="passthrough" if i % 2 else "mapped-xattr"))
        mounts = [threading.Thread(target=g.mount) for g in guests]
        for t in mounts:
            t.start()
        for t in mounts:
            t.join(60)
        assert all(g.client is not None for g in guests), "some guests did not mount"
        results: dict[int, object] = {}

        def run(g: RealGuest) -> None:
            results[g.domid] = run_workload("smoke", g.root, seed=g.domid)

        threads = [threading.Thread(target=run, args=(g,)) for g in guests]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == DEVICES
        for domid, s in results.items():
            assert s.errors == 0 and s.ops > 0, (domid, s.details)

        r = xen9pctl(d, "status", "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        devs = {x["name"]: x for x in st["devices"]}
        assert st["daemon"]["devices"] == DEVICES and st["daemon"]["rings"] == 2 * DEVICES
        for g in guests:
            dev = devs[g.name]
            assert dev["state"] == "connected" and len(dev["rings"]) == 2
            assert dev["uptime"] > 0
            cores = [x["cpu"] for x in dev["rings"]]
            if len(st["daemon"]["cpus"]) > 1:
                assert cores[0] != cores[1], f"{g.name}: both rings on core {cores[0]}"
            for x in dev["rings"]:
                assert x["pid"] and x["state"] == "running"
                assert psutil.Process(x["pid"]).cpu_affinity() == [x["cpu"]], x
                assert f"xen9p {x['name']}" in " ".join(psutil.Process(x["pid"]).cmdline())
    finally:
        for g in guests:
            g.close()


def test_status_table_uptime_and_top_against_a_live_daemon(world):
    d = world.daemon
    g = RealGuest(world, 40).mount()
    try:
        load = Load(g.client, g.root, threads=2, burst=8).start()
        load.wait_ops(100)
        # The metrics tick publishes rates; wait until a non-zero request rate is visible.
        wait_for(lambda: (x := d.device("dom40/dev0")) and x["requests_per_s"] > 0, 10, "a request rate")
        load.stop()
        assert not load.errors, load.errors
        r = xen9pctl(d, "status")
        assert r.returncode == 0, r.stderr
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("dom40/dev0"))
        cols = line.split()
        header = next(ln for ln in r.stdout.splitlines() if ln.startswith("DEVICE")).split()
        uptime = cols[header.index("UPTIME") + 1]  # PID@CPU holds two space-separated workers
        assert uptime != "-" and uptime.endswith("s"), line
        r = xen9pctl(d, "top", "--count", "3", "--interval", "0.1")
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("xen9pd pid") == 3 and "dom40/dev0" in r.stdout
        r = xen9pctl(d, "--json", "top", "--count", "2", "--interval", "0.1")
        assert r.returncode == 0, r.stderr
        frames = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]
        assert len(frames) == 2 and all(any(x["name"] == "dom40/dev0" for x in f["devices"]) for f in frames)
        assert g.be_state() == XenbusState.Connected
    finally:
        g.close()
