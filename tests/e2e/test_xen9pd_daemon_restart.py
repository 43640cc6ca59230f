"""xen9pd restarted while devices are Connected (killed hard, or stopped cleanly) with real ring workers.

The new daemon closes what the old one left (backend Closed), the guest's requests fail instead of hanging,
and a reconnecting frontend is served again. Segments of the dead daemon's device state are freed.
"""
from __future__ import annotations

import os
import re
import signal

import pytest

from tests.e2e.real_guest import DEADLINE, RealGuest, World
from tests.e2e.xen9pd_helpers import wait_for
from xen9p_common.client import ClientError
from xen9p_common.xenbus import XenbusState


@pytest.fixture
def world():
    w = World("dre")
    yield w
    w.close()


def _segments_of(pid: int) -> set[str]:
    pat = re.compile(rf"^xen9p-\d+-\d+-{pid}-\d+$")
    return {n for n in os.listdir("/dev/shm") if pat.match(n)}


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_restarted_daemon_closes_connected_devices_and_guests_reconnect(world, how):
    old = world.daemon
    a = RealGuest(world, 7).mount()
    b = RealGuest(world, 8, tag="other").mount()
    try:
        assert a.works() and b.works()
        old_pid = old.proc.pid
        assert _segments_of(old_pid)
        old.stop(how)
        if how == signal.SIGKILL:
            # Workers die with their parent (PDEATHSIG); the backend still says Connected.
            assert a.be_state() == XenbusState.Connected
        new = world.start_daemon()
        for g in (a, b):
            wait_for(lambda g=g: g.be_state() == XenbusState.Closed, DEADLINE, f"{g.name} closed by the new daemon")
            assert g.fe.backend_closed.wait(DEADLINE), f"{g.name}: frontend did not see Closed"
            # The old session is gone: a request fails at once instead of waiting on a dead ring.
            with pytest.raises(ClientError):
                g.root.getattr()
        if how == signal.SIGKILL:
            assert "closing it so the frontend reconnects" in new.logs()
        assert not _segments_of(old_pid), "the dead daemon's device state was not freed"
        for g in (a, b):
            g.remount()
            assert g.be_state() == XenbusState.Connected
            assert g.works("again")
        assert new.device("dom7/dev0")["state"] == "connected"
    finally:
        a.close()
        b.close()


def test_stale_backend_whose_export_went_away_fails_closed_and_others_reconnect(world):
    """The STALE_BACKEND row with keys that no longer hold: the new daemon still writes Closed (the
    guest never waits on a dead ring) and names the reason; the other device reconnects."""
    a = RealGuest(world, 11).mount()
    b = RealGuest(world, 12, tag="other").mount()
    try:
        assert a.works() and b.works()
        world.daemon.stop(signal.SIGKILL)
        os.rename(a.export, a.export + ".moved")  # the toolstack's path is no directory when the daemon returns
        with open(a.export, "w"):
            pass  # (a missing one would be created again for this kind, xen_9pfs, as xen-9pfsd does)
        new = world.start_daemon()
        for g in (a, b):
            wait_for(lambda g=g: g.be_state() == XenbusState.Closed, DEADLINE, f"{g.name} closed by the new daemon")
        dev = new.device("dom11/dev0")
        assert "is not a directory on this host" in dev["error"] and dev["backend_state"] == "Closed"
        assert f"dom11/dev0: disconnecting: export {a.export} is not a directory on this host" in new.logs()
        b.remount()
        assert b.works("again") and new.device("dom12/dev0")["state"] == "connected"
    finally:
        a.close()
        b.close()
