"""Worker restarts with the REAL ring worker under guest load: invisible to the guest, every request answered once.

Also a worker command that dies at once: BACKOFF, then FATAL, its device Closed, other devices serving.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from tests.e2e.real_guest import DEADLINE, Load, RealGuest, World, ring, wait_new_worker, xen9pctl
from tests.waiting import wait_for
from xen9p_sim.frontend.linux import FrontendError
from xen9p_common.xenbus import XenbusState


@pytest.fixture(scope="module")
def world():
    w = World("rst")
    yield w
    w.close()


def _finish(load: Load, g: RealGuest) -> None:
    load.stop()
    assert not load.errors, load.errors
    assert not load.stray, f"replies for tags not outstanding (answered twice?): {load.stray[:20]}"
    assert load.sent == load.replies, f"{load.sent} requests sent, {load.replies} replies"
    assert g.be_state() == XenbusState.Connected
    assert g.works("after")


def test_sigkilled_workers_under_load_are_invisible_to_the_guest(world):
    d = world.daemon
    g = RealGuest(world, 3).mount()
    try:
        load = Load(g.client, g.root).start()
        load.wait_ops(200, "load under way")
        for name in ("dom3/dev0/ring0", "dom3/dev0/ring1", "dom3/dev0/ring0"):
            old = ring(d, name)
            os.kill(old["pid"], signal.SIGKILL)
            new = wait_new_worker(d, name, old["pid"])
            assert new["cpu"] == old["cpu"]
            load.wait_ops(200, f"load progressing after killing {name}")
        _finish(load, g)
        assert ring(d, "dom3/dev0/ring0")["exits"]["crash"] == 2
        assert ring(d, "dom3/dev0/ring1")["exits"]["crash"] == 1
        assert "dom3/dev0/ring1: worker exited (crash, signal 9); restarting" in d.logs()
    finally:
        g.close()


def test_operator_restart_ring_under_load_is_invisible(world):
    d = world.daemon
    g = RealGuest(world, 4).mount()
    try:
        load = Load(g.client, g.root).start()
        load.wait_ops(200, "load under way")
        for name in ("dom4/dev0/ring1", "dom4/dev0/ring0"):
            old = ring(d, name)
            r = xen9pctl(d, "restart-ring", name)
            assert r.returncode == 0, r.stderr
            new = wait_new_worker(d, name, old["pid"])
            assert new["exits"]["requested"] == 1 and new["exits"]["crash"] == 0
            load.wait_ops(200, f"load progressing after restarting {name}")
        _finish(load, g)
    finally:
        g.close()


def test_worker_that_dies_at_once_goes_fatal_and_closes_only_its_device(world):
    d = world.daemon
    good = RealGuest(world, 5).mount()
    bad = None
    cfg = d.config_path
    with open(cfg) as f:
        original = f.read()
    try:
        # Reload with a worker command that exits at once: only workers spawned from now on use it.
        dying = json.dumps(f"{sys.executable} -c 'raise SystemExit(3)'")
        with open(cfg, "w") as f:
            f.write("".join(ln for ln in original.splitlines(True) if not ln.startswith("worker_cmd ")))
            f.write(f"worker_cmd = {dying}\n")
        assert xen9pctl(d, "reload").returncode == 0
        bad = RealGuest(world, 6)
        bad.fe.timeout = DEADLINE
        with pytest.raises(FrontendError):
            bad.mount()
        wait_for(lambda: bad.be_state() == XenbusState.Closed, DEADLINE, "dom6/dev0 Closed")
        logs = d.wait_log("dom6/dev0: disconnecting: dom6/dev0/ring")
        assert "worker exited (crash, status 3); restarting in" in logs
        assert "giving up (FATAL)" in logs
        dev = d.device("dom6/dev0")
        assert dev["state"] == "failed" and "FATAL" in dev["error"]
        # The other device never noticed.
        assert good.be_state() == XenbusState.Connected and good.works("while-bad")
        assert all(r["state"] == "running" and r["restarts"] == 0 for r in d.device("dom5/dev0")["rings"])
    finally:
        with open(cfg, "w") as f:
            f.write(original)
        xen9pctl(d, "reload")
        if bad is not None:
            bad.close()
        good.close()
