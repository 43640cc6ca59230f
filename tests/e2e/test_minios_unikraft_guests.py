"""xen9pd with real ring workers serving a Mini-OS-like guest (9P2000.u, one ring of order 4, live update, Closing
before Closed) and a Unikraft-like one (msize = the whole ring, Tcreate for mkdir, Tremove, full-ring replies).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import threading

import pytest

from tests.e2e.real_guest import DEADLINE, World, ring, wait_new_worker
from tests.e2e.xen9pd_helpers import ROOT, env_for_children
from tests.waiting import wait_for
from xen9p_sim.client import P9Error
from xen9p_common.p9 import constants as c
from xen9p_common.p9 import messages as m
from xen9p_sim.frontend.linux import Misbehave
from xen9p_sim.frontend.minios import MiniOSFrontend
from xen9p_sim.frontend.unikraft import UnikraftFrontend, uk_mkdir, uk_remove, unikraft_mount
from xen9p_sim.frontend.minios_session import ROOT_FID, MiniOSSession
from xen9p_sim.workloads import run_workload
from xen9p_sim.workloads.minios import live_update, minios
from xen9p_common.ring import ring_size
from xen9p_common.xenbus import XenbusState
from xen9p_supervisor import toolstack
from xen9p_sim.cli import attach_device, destroy_domain


@pytest.fixture(scope="module")
def world():
    w = World("mu")
    yield w
    w.close()


class Attached:
    """One xen_9pfs device (and a frontend of class `cls`, if given); detached and destroyed on exit."""

    def __init__(self, world: World, domid: int, cls=None, model: str = "passthrough") -> None:
        self.world, self.domid = world, domid
        self.export = os.path.join(world.dir, f"export{domid}")
        os.makedirs(self.export, exist_ok=True)
        self.be, _ = attach_device(world.xs, domid=domid, path=self.export, tag="share", security_model=model)
        self.fe = cls(world.dir, domid, "share", timeout=10) if cls else None

    def be_state(self) -> XenbusState | None:
        v = self.world.xs.read(self.be + "/state")
        return XenbusState(int(v)) if v and v.isdigit() else None

    def __enter__(self) -> "Attached":
        return self

    def __exit__(self, *exc) -> None:
        if self.fe is not None:
            self.fe.close()
        try:
            toolstack.detach(self.world.xs, domid=self.domid, timeout=10)
        except Exception:  # noqa: BLE001 - already gone
            pass
        destroy_domain(self.world.xs, self.domid)


def _minios_session(fe: MiniOSFrontend) -> MiniOSSession:
    s = MiniOSSession(fe.connect(), timeout=30)
    s.version(fe.transport.maxsize)
    s.attach()
    return s


# -- xenbus only (no 9P): holds whatever the server speaks -------------------------------------

def test_minios_xenbus_sequence_and_clean_closing_shutdown(world):
    with Attached(world, 40, MiniOSFrontend) as g:
        g.fe.connect()
        assert g.be_state() is XenbusState.Connected and g.fe.order == 4
        dev = world.daemon.device("dom40/dev0")
        assert dev["state"] == "connected" and dev["num_rings"] == 1
        g.fe.disconnect()  # raises unless xen9pd answered our Closing with Closing
        assert g.fe.closing_answer is XenbusState.Closing
        wait_for(lambda: g.be_state() is XenbusState.Closed, DEADLINE, "backend Closed after the frontend's Closed")
        wait_for(lambda: world.daemon.device("dom40/dev0")["state"] == "closed", DEADLINE, "device closed")
        assert world.daemon.device("dom40/dev0")["error"] is None


def test_unikraft_xenbus_two_rings_of_order_6(world):
    with Attached(world, 41, UnikraftFrontend) as g:
        tr = g.fe.connect()
        assert len(tr.rings) == 2 and g.fe.order == 6 and tr.maxsize == ring_size(6)
        dev = world.daemon.device("dom41/dev0")
        assert dev["state"] == "connected" and dev["num_rings"] == 2


# -- 9P: these need the 9P2000.u server and Tcreate in .L sessions -------------------------------

def test_minios_session_with_live_update_keeps_fid_0_and_open_fids(world):
    with Attached(world, 42, MiniOSFrontend) as g:
        s = _minios_session(g.fe)
        try:
            assert s.msize == 16 * 1024
            log = s.open("xenstored.log", c.ORDWR, create=True)
            assert s.write(log, 0, b"before\n") == 7
            data = os.urandom(3 * s.msize)
            f = s.open("state.bin", c.ORDWR, create=True)
            assert s.write(f, 0, data) == len(data)
            st = s.stat(f.fid)
            assert st.length == len(data) and st.name == "state.bin"
            s.clunk(f.fid)
            s = live_update(g.fe, s)  # Tversion only, same version and msize
            assert s.sent == {"Tversion": 1}
            assert s.stat(ROOT_FID).mode & c.DMDIR  # fid 0 was kept
            assert s.write(log, 7, b"after\n") == 6  # so was the open log's fid
            f = s.open("state.bin", c.OREAD)  # walks from fid 0
            assert s.read(f, 0, len(data) + 1) == data
            s.clunk(f.fid)
            s.clunk(log.fid)
            with open(os.path.join(g.export, "xenstored.log"), "rb") as h:
                assert h.read() == b"before\nafter\n"
            for name in ("xenstored.log", "state.bin"):
                s.remove(s.walk(name))
            assert os.listdir(g.export) == []
        finally:
            s.close()
        g.fe.disconnect()
        assert g.fe.closing_answer is XenbusState.Closing
        wait_for(lambda: g.be_state() is XenbusState.Closed, DEADLINE, "backend Closed")


def test_minios_workload_passes(world):
    with Attached(world, 43, MiniOSFrontend, model="mapped-xattr") as g:
        s = _minios_session(g.fe)
        try:
            summary, s = minios(g.fe, s, seed=3, scale=2)
            assert summary.errors == 0, summary.details
            assert g.fe.live_updates == 1 and summary.ops > 10
        finally:
            s.close()
        g.fe.disconnect()
        assert os.listdir(g.export) == []


def test_unikraft_session_mkdir_by_tcreate_remove_by_tremove_and_full_ring_reads(world):
    with Attached(world, 44, UnikraftFrontend) as g:
        client, root = unikraft_mount(g.fe)
        try:
            assert client.msize == ring_size(6) == 128 * 1024 and client.version_string == "9P2000.L"
            qid = uk_mkdir(root, "dir", 0o750)
            assert qid.type & c.QTDIR
            host = os.path.join(g.export, "dir")
            assert stat.S_ISDIR(os.lstat(host).st_mode) and os.lstat(host).st_mode & 0o777 == 0o750
            full = client.msize - 11
            with open(os.path.join(host, "big"), "wb") as h:
                h.write(os.urandom(full + 4096))
            with open(os.path.join(host, "big"), "rb") as h:
                want = h.read(full)
            with root.walk(["dir"]) as d, d.open_path(["big"], c.L_O_RDONLY) as f:
                for _ in range(3):  # each Rread is msize bytes: it fills the whole in-ring
                    assert bytes(client.rpc(m.Tread, f.fid, 0, full).data) == want
            with root.walk(["dir"]) as d:
                uk_remove(d, "big")
            uk_remove(root, "dir")
            assert os.listdir(g.export) == []
            summary = run_workload("unikraft", root, seed=2, scale=2)
            assert summary.errors == 0, summary.details
        finally:
            client.close()


@pytest.mark.parametrize("domid,frontend,workloads,version,msize", [
    (45, "minios", "minios", "9P2000.u", 16 * 1024),
    (46, "unikraft", "unikraft,smoke", "9P2000.L", 128 * 1024),
])
def test_xen9psim_guest_runs_each_kernel(world, domid, frontend, workloads, version, msize):
    """`xen9psim guest --frontend ...`: the simulated guests as the CLI (and the demo) run them."""
    with Attached(world, domid) as g:
        r = subprocess.run([sys.executable, "-m", "xen9p_sim.cli", "--sim-dir", world.dir, "guest",
                            "--domid", str(domid), "--tag", "share", "--frontend", frontend, "--json", "run",
                            workloads], capture_output=True, text=True, cwd=ROOT, env=env_for_children(),
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        summary = json.loads(r.stdout.splitlines()[-1])["summary"]
        assert summary["frontend"] == frontend and summary["version"] == version and summary["msize"] == msize
        assert summary["errors"] == 0 and [w["workload"] for w in summary["workloads"]] == workloads.split(",")
        assert summary.get("live_updates", 0) == (1 if frontend == "minios" else 0)
        assert os.listdir(g.export) == []


def test_minios_hasty_close_still_ends_closed_and_frees_the_device(world):
    """Misbehave.hasty_close: Closing and Closed back to back (the daemon may see them as one change)."""
    with Attached(world, 47, None) as g:
        g.fe = MiniOSFrontend(world.dir, 47, "share", timeout=10, misbehave=Misbehave(hasty_close=True))
        g.fe.connect()
        rings = world.daemon.device("dom47/dev0")["rings"]
        assert len(rings) == 1 and rings[0]["pid"]
        g.fe.disconnect()
        wait_for(lambda: g.be_state() is XenbusState.Closed, DEADLINE, "backend Closed")
        wait_for(lambda: world.daemon.device("dom47/dev0")["rings"] == [], DEADLINE, "the ring worker stopped")
        assert world.daemon.device("dom47/dev0")["state"] == "closed"


def test_minios_reinit_with_another_msize_is_a_real_reset(world):
    """Only the same version and msize keep the fids; any other Tversion resets the session (fid 0 gone)."""
    with Attached(world, 48, MiniOSFrontend) as g:
        s = _minios_session(g.fe)
        try:
            s = live_update(g.fe, s, msize=8192)
            with pytest.raises(P9Error) as ei:
                s.stat(ROOT_FID)
            assert ei.value.errno != errno.EDOM  # an Rerror, never an Rlerror, in a .u session
            s.attach()  # a fresh attach works again
            assert s.stat(ROOT_FID).mode & c.DMDIR
        finally:
            s.close()


def test_minios_threads_keep_many_tags_in_flight_on_its_one_ring(world):
    """Mini-OS's threads each wait for their own tag; the worker answers them in any order on one ring."""
    with Attached(world, 49, MiniOSFrontend) as g:
        s = _minios_session(g.fe)
        errors: list[str] = []

        def worker(i: int) -> None:
            try:
                data = os.urandom(5000 + i)
                for round_ in range(5):
                    f = s.open(f"t{i}", c.ORDWR | c.OTRUNC, create=True)
                    assert s.write(f, 0, data) == len(data)
                    assert s.read(f, 0, len(data)) == data, f"t{i} round {round_}"
                    s.clunk(f.fid)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"t{i}: {e!r}")

        try:
            threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(DEADLINE)
            assert not any(t.is_alive() for t in threads) and errors == []
            assert sorted(os.listdir(g.export)) == sorted(f"t{i}" for i in range(16))
            assert s.sent["Tcreate"] == 16 and s.sent["Topen"] == 16 * 4  # created once, then opened
        finally:
            s.close()


class Looping:
    """Runs `one(n)` for n = 0, 1, ... in a thread until stopped; counts rounds, keeps failures."""

    def __init__(self, one) -> None:
        self.one, self.rounds, self.errors = one, 0, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.one(self.rounds)
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(f"round {self.rounds}: {e!r}")
                return
            self.rounds += 1

    def wait_rounds(self, more: int, what: str) -> None:
        target = self.rounds + more
        wait_for(lambda: self.rounds >= target or self.errors or not self._t.is_alive(), DEADLINE, what)
        assert not self.errors, self.errors

    def stop(self) -> None:
        self._stop.set()
        self._t.join(DEADLINE)
        assert not self._t.is_alive() and not self.errors, self.errors


def _kill_twice(world: World, name: str, load: Looping) -> None:
    for _ in range(2):
        old = ring(world.daemon, name)
        os.kill(old["pid"], signal.SIGKILL)
        wait_new_worker(world.daemon, name, old["pid"])
        load.wait_rounds(3, f"the guest going on after {name} was killed")


def test_minios_guest_does_not_notice_its_worker_being_killed(world):
    """The crash-resume journal in a .u session: Tcreate, Tremove and the live-update Tversion never twice."""
    with Attached(world, 50, MiniOSFrontend) as g:
        box = {"s": _minios_session(g.fe)}

        def one(n: int) -> None:
            summary, box["s"] = minios(g.fe, box["s"], seed=n)
            assert summary.errors == 0, summary.details

        load = Looping(one)
        try:
            load.wait_rounds(2, "the Mini-OS workload under way")
            _kill_twice(world, "dom50/dev0/ring0", load)
        finally:
            load.stop()
            box["s"].close()
        assert ring(world.daemon, "dom50/dev0/ring0")["exits"]["crash"] == 2
        assert g.fe.live_updates == load.rounds and os.listdir(g.export) == []


def test_unikraft_guest_does_not_notice_its_workers_being_killed(world):
    with Attached(world, 51, UnikraftFrontend) as g:
        client, root = unikraft_mount(g.fe)

        def one(n: int) -> None:
            summary = run_workload("unikraft", root, seed=n)
            assert summary.errors == 0, summary.details

        load = Looping(one)
        try:
            load.wait_rounds(2, "the Unikraft workload under way")
            _kill_twice(world, "dom51/dev0/ring0", load)
            _kill_twice(world, "dom51/dev0/ring1", load)
        finally:
            load.stop()
            client.close()
        assert os.listdir(g.export) == []
