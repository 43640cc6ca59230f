"""xen9pd worker supervision end to end: SIGKILL restart, crash-at-once -> BACKOFF -> FATAL, heartbeat timeout.

Uses the fake worker (tests/e2e/fake_worker.py), told per ring how to misbehave through XEN9P_FAKE_MODES.
"""
from __future__ import annotations

import os
import signal

from tests.e2e.xen9pd_helpers import Guest, Xen9pd, ring
from tests.waiting import wait_for




def test_sigkilled_worker_is_restarted_and_device_keeps_serving(sim):
    tmp, xs = sim
    d = Xen9pd(tmp, tmp)
    try:
        g = Guest(xs, 3).attach(tmp)
        g.connect(2)
        old = ring(d, "dom3/dev0/ring1")
        os.kill(old["pid"], signal.SIGKILL)
        new = wait_for(lambda: (r := ring(d, "dom3/dev0/ring1"))["pid"] not in (None, old["pid"])
                       and r["state"] == "running" and r, 10, "ring1 restarted")
        assert new["restarts"] == 1 and new["exits"]["crash"] == 1
        assert new["cpu"] == old["cpu"]
        assert g.be_state() == 4 and d.device("dom3/dev0")["state"] == "connected"
        assert ring(d, "dom3/dev0/ring0")["pid"] != None
        assert "dom3/dev0/ring1: worker exited (crash, signal 9); restarting" in d.logs()
        # Operator restart: a requested exit, not a crash.
        r = d.request("restart-ring", {"ring": "dom3/dev0/ring0"})
        assert r["ok"], r
        wait_for(lambda: ring(d, "dom3/dev0/ring0")["state"] == "running", 10, "ring0 back")
        assert ring(d, "dom3/dev0/ring0")["exits"]["requested"] == 1
    finally:
        d.stop()


def test_crash_at_once_goes_fatal_and_closes_only_that_device(sim):
    tmp, xs = sim
    d = Xen9pd(tmp, tmp, fake_modes="dom5/dev0/ring1=crash")
    try:
        good = Guest(xs, 4).attach(tmp)
        good.connect(2)
        bad = Guest(xs, 5).attach(tmp)
        bad.connect(2, wait=False)
        bad.wait_be(6, timeout=15)
        logs = d.wait_log("dom5/dev0: disconnecting: dom5/dev0/ring1: worker failed 3 times")
        assert "giving up (FATAL)" in logs
        assert "dom5/dev0/ring1: worker exited (crash, status 3); restarting" in logs
        dev = d.device("dom5/dev0")
        assert dev["state"] == "failed" and dev["rings"] == [] and "FATAL" in dev["error"]
        assert good.be_state() == 4 and d.device("dom4/dev0")["state"] == "connected"
        assert all(r["state"] == "running" for r in d.device("dom4/dev0")["rings"])
    finally:
        d.stop()


def test_silent_worker_is_aborted_and_restarted(sim):
    tmp, xs = sim
    d = Xen9pd(tmp, tmp, fake_modes="dom6/dev0/ring0=hang", startretries=5)
    try:
        g = Guest(xs, 6).attach(tmp)
        g.connect(1)
        pid = ring(d, "dom6/dev0/ring0")["pid"]
        r = wait_for(lambda: (x := ring(d, "dom6/dev0/ring0"))["exits"]["timeout"] >= 1 and x, 10,
                     "heartbeat timeout")
        assert "dom6/dev0/ring0: worker pid %d silent" % pid in d.logs()
        assert r["restarts"] >= 1 or r["state"] == "backoff"
    finally:
        d.stop()


def test_worker_fatal_error_disconnects_device(sim):
    tmp, xs = sim
    d = Xen9pd(tmp, tmp, fake_modes="dom7/dev0=fatal")
    try:
        g = Guest(xs, 7).attach(tmp)
        g.connect(2, wait=False)
        g.wait_be(6)
        assert "dom7/dev0: disconnecting: dom7/dev0/ring" in d.wait_log("ring indexes beyond the ring")
    finally:
        d.stop()
