"""xenstored restarting under a serving xen9pd: rings serve on, xen9pd reconnects, re-arms its watches, rescans.

Real workers on the simulated Xen; the xenstored process drops every connection and its sockets
(restartable_xenstored.py) and comes back with its store, as after a restart that restores it.
"""
from __future__ import annotations

import os

import pytest

from tests.e2e import real_guest
from tests.e2e.real_guest import RealGuest, World, ring
from tests.e2e.restartable_xenstored import RestartableXenstored
from tests.e2e.xen9pd_helpers import SimXenstored, wait_for
from xen9p_supervisor.ctl_tables import status_table

DEADLINE = 20.0


@pytest.fixture
def world(monkeypatch):
    monkeypatch.setattr(real_guest, "SimXenstored", RestartableXenstored)
    # No periodic rescans: whatever xen9pd finds after the reconnect, its re-armed watches found.
    w = World("xsr", rescan_interval=3600.0)
    yield w
    w.close()


def _xenstore(daemon) -> str:
    return daemon.status()["daemon"]["xenstore"]


def _pids(daemon, dev: str) -> list:
    return [ring(daemon, f"{dev}/ring{i}")["pid"] for i in (0, 1)]


def _reconnect_clients(world: World, guests: list[RealGuest]) -> None:
    """The test's own dom0 client (the toolstack's) died with xenstored: a new one."""
    world.xs.close()
    world.xs = world.xsd.client()
    for g in guests:
        g.xs = world.xs


def test_xenstored_restart_keeps_rings_serving_and_xen9pd_reconnects(world):
    d = world.daemon
    a, b = RealGuest(world, 60).mount(), RealGuest(world, 61).mount()
    before = {g.name: _pids(d, g.name) for g in (a, b)}
    world.xsd.down()
    d.wait_log("lost the xenstore connection")
    wait_for(lambda: _xenstore(d) == "reconnecting", DEADLINE, "status to say reconnecting")  # control answers
    assert "XENSTORE LOST: reconnecting" in status_table(d.status())
    assert a.works("outage-a") and b.works("outage-b")  # rings need no xenstore
    assert d.proc.poll() is None
    world.xsd.up()
    d.wait_log("xenstore connection back", DEADLINE)
    wait_for(lambda: _xenstore(d) == "connected", DEADLINE, "status to say connected")
    _reconnect_clients(world, [a, b])
    # Nothing was swept or restarted: the same workers serve the same devices.
    assert {g.name: _pids(d, g.name) for g in (a, b)} == before
    assert all(ring(d, f"{g.name}/ring{i}")["restarts"] == 0 for g in (a, b) for i in (0, 1))
    assert a.works("after-a") and b.works("after-b")
    # A new guest is found through the re-armed backend watch (no periodic rescan runs).
    c = RealGuest(world, 62).mount()
    assert c.works("new-after-restart")
    # A detach is seen through the re-armed watches too: its workers end, the others serve on.
    a.close()
    wait_for(lambda: d.device(a.name) is None, DEADLINE, f"{a.name} released")
    assert b.works("after-detach") and c.works("after-detach")
    assert d.status()["daemon"]["xenstore_lost_total"] == 1
    logs = d.logs()
    assert "Traceback" not in logs and "internal error" not in logs, logs[-3000:]
    for g in (b, c):
        g.close()


def test_xenstored_down_for_long_retries_with_backoff_and_a_second_loss_is_survived_too(world):
    d = world.daemon
    a = RealGuest(world, 63).mount()
    for n in (1, 2):
        world.xsd.down()
        wait_for(lambda: d.logs().count("xenstore still unavailable") == n, DEADLINE,
                 "a reconnect attempt to find no xenstored")
        assert a.works(f"outage-{n}")
        world.xsd.up()
        wait_for(lambda: _xenstore(d) == "connected" and d.status()["daemon"]["xenstore_lost_total"] == n,
                 DEADLINE, f"reconnect {n}")
        _reconnect_clients(world, [a])
        assert a.works(f"after-{n}")
    assert d.logs().count("xenstore connection back") == 2
    a.close()
    wait_for(lambda: d.device(a.name) is None, DEADLINE, f"{a.name} released")


def test_xenstored_killed_and_started_empty_releases_what_vanished_and_serves_new_guests(world):
    """A xenstored that comes back without its database (SIGKILL, then a fresh one on the same socket):
    every backend node is gone, so the rescan after the reconnect releases those devices as on a
    detach; xen9pd neither crashes nor hangs, and a guest attached to the new xenstored is served."""
    d = world.daemon
    a = RealGuest(world, 64).mount()
    pids = _pids(d, a.name)
    world.xsd.proc.kill()
    world.xsd.proc.wait()
    world.xsd.stop()
    d.wait_log("lost the xenstore connection")
    world.xsd = SimXenstored(world.dir)
    world.xs.close()
    world.xs = world.xsd.client()
    d.wait_log("xenstore connection back", DEADLINE)
    wait_for(lambda: d.device(a.name) is None, DEADLINE, f"{a.name} released after its nodes vanished")
    wait_for(lambda: not any(_alive(p) for p in pids), DEADLINE, f"{a.name}'s workers to end")
    a.fe.close()  # its xenstore is gone too: only the local cleanup
    b = RealGuest(world, 65).mount()
    assert b.works("on-the-new-xenstored")
    assert d.proc.poll() is None
    logs = d.logs()
    assert "Traceback" not in logs and "internal error" not in logs, logs[-3000:]
    b.close()


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
