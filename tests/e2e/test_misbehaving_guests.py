"""Hostile and broken simulated guests against a running xen9pd with real ring workers.

Each knob: the bad device ends Closed with a log line naming it, a good guest keeps serving, the daemon lives.
"""
from __future__ import annotations

import errno
import itertools
import os

import psutil
import pytest

from tests.e2e.real_guest import DEADLINE, RealGuest, World
from tests.e2e.xen9pd_helpers import procs_with
from tests.waiting import wait_for
from xen9p_common.errors import PlatformError, XenStoreError
from xen9p_common.p9 import constants as c
from xen9p_common.p9 import messages as m
from xen9p_sim.frontend.linux import FrontendError, Misbehave, domain_socket, flood_tflush
from xen9p_common.platform.sim.grants import SimGrantMapper
from xen9p_common.platform.xswire import XsWireClient
from xen9p_common.xenbus import XenbusState
from xen9p_supervisor import toolstack
from xen9p_sim.cli import destroy_domain



@pytest.fixture(scope="module")
def world():
    """One sim xenstored and one xen9pd (real workers) for the module; tests use distinct domids."""
    w = World("mis")
    yield w
    w.close()


_good_domids = itertools.count(100)


@pytest.fixture
def good(world):
    """A well-behaved guest on its own domid (unique per test) that must keep working."""
    domid = next(_good_domids)
    g = RealGuest(world, domid, tag="good").mount()
    assert g.works()
    yield g
    assert g.works("after"), "the good guest stopped working"
    assert world.daemon.ping(), "xen9pd stopped answering"
    g.close()


def workers_of(domid: int) -> list[int]:
    """Pids of ring workers serving `domid` (their command line says --domid N)."""
    out = []
    for p in procs_with("xen9p_worker"):
        try:
            argv = p.cmdline()
        except psutil.Error:
            continue
        if "--domid" in argv and argv[argv.index("--domid") + 1:][:1] == [str(domid)]:
            out.append(p.pid)
    return out


def _bad(world, domid: int, **kw) -> RealGuest:
    return RealGuest(world, domid, **kw)


@pytest.mark.parametrize("domid,bad,reason", [
    (11, Misbehave(version="2"), "version"),
    (12, Misbehave(num_rings=0), "num-rings"),
    (13, Misbehave(num_rings=9), "num-rings"),
    (14, Misbehave(ref_zero=True), "ring-ref"),
    (15, Misbehave(ring_order=10), "order"),
])
def test_bad_handshake_values_close_the_device(world, good, domid, bad, reason):
    g = _bad(world, domid, misbehave=bad)
    try:
        with pytest.raises(FrontendError):
            g.fe.connect()
        g.wait_closed()
        log = world.daemon.wait_log(f"dom{domid}/dev0")
        lines = [ln for ln in log.splitlines() if f"dom{domid}/dev0" in ln and "WARNING" in ln.upper()]
        assert any(reason in ln for ln in lines), lines
    finally:
        g.close()


@pytest.mark.parametrize("domid,inject", [
    (21, lambda fe: fe.inject_garbage_size(0, size=3)),
    (22, lambda fe: fe.inject_garbage_size(1, size=0x7FFFFFF0)),
    (23, lambda fe: fe.inject_index_beyond_ring(0)),
])
def test_broken_ring_closes_only_that_device(world, good, domid, inject):
    g = _bad(world, domid).mount()
    try:
        assert g.works()
        inject(g.fe)
        g.wait_closed()
        assert g.fe.backend_closed.wait(DEADLINE)
        log = world.daemon.wait_log(f"dom{domid}/dev0: disconnecting")
        assert "ring" in log.split(f"dom{domid}/dev0: disconnecting", 1)[1].splitlines()[0].lower()
    finally:
        g.close()


def test_half_written_request_waits_and_stalls_nothing(world, good):
    g = _bad(world, 31).mount()
    try:
        frame = m.encode(m.Tmkdir(0x7000, g.root.fid, "late", 0o755, 0))  # tag even: ring 0
        complete = g.fe.inject_half_request(frame, ring=0)
        assert good.works("while-half")
        assert not os.path.exists(os.path.join(g.export, "late"))
        assert g.be_state() == XenbusState.Connected
        complete()
        wait_for(lambda: os.path.isdir(os.path.join(g.export, "late")), DEADLINE, "the completed Tmkdir")
        assert g.works()
    finally:
        g.close()


def test_tflush_flood_is_answered(world, good):
    g = _bad(world, 32).mount()
    try:
        assert flood_tflush(g.client, 3000) == 3000
        assert g.works()
        assert g.be_state() == XenbusState.Connected
    finally:
        g.close()


def test_never_consuming_replies_blocks_only_that_device(world, good):
    g = _bad(world, 33).mount()
    try:
        with g.root.create("big", c.L_O_RDWR | c.L_O_CREAT, 0o644) as f:
            f.write(os.urandom(1 << 20), 0)
        f = g.root.open_path(["big"], c.L_O_RDONLY)
        tr = g.fe.transport
        tr.never_consume = True
        for tag in range(0x100, 0x100 + 8 * 2, 2):  # ring 0: 8 x 500 KiB replies overfill its 1 MiB
            tr.send(m.encode(m.Tread(tag, f.fid, 0, 500 * 1024)))
        ring = tr.rings[0]
        wait_for(lambda: ring.fr.replies_queued() >= 500 * 1024, DEADLINE, "replies queued, unconsumed")
        assert good.works("while-stuck")
        # Closing must not hang on a worker that waits for room in the IN ring.
        g.client.close()
        g.client = None
        g.fe.disconnect()
        g.wait_closed()
    finally:
        g.close()


def test_vanishing_guest_is_released(world, good):
    xs, daemon = world.xs, world.daemon
    g = _bad(world, 34).mount()
    try:
        assert g.works()
        assert len(workers_of(34)) == 2
        g.fe.vanish(m.encode(m.Tgetattr(0x42, g.root.fid, c.GETATTR_BASIC)))
        # The toolstack notices the dead domain: its nodes go and xenstored releases it.
        destroy_domain(xs, 34)
        wait_for(lambda: daemon.device("dom34/dev0") is None, DEADLINE, "dom34/dev0 forgotten")
        wait_for(lambda: not workers_of(34), DEADLINE, "dom34 workers gone")
    finally:
        g.client.close()
        g.client = None
        try:
            toolstack.detach(xs, domid=34, timeout=2)
        except Exception:  # noqa: BLE001 - the nodes are gone already
            pass


def test_frontend_reconnects_after_closed(world):
    g = _bad(world, 41).mount()
    try:
        assert g.works("one")
        g.client.close()
        g.fe.disconnect()
        g.wait_closed()
        tr = g.fe.reconnect()
        assert g.be_state() == XenbusState.Connected
        from xen9p_sim.client import Client
        g.client = Client(tr, name="again")
        g.client.version(128 * 1024 + 24)
        g.root = g.client.attach("", "root", 0)
        assert g.works("two")
    finally:
        g.close()


def test_same_tag_on_two_domains_is_kept_apart(world):
    a = _bad(world, 51, tag="same").mount()
    b = _bad(world, 52, tag="same", model="mapped-xattr").mount()
    try:
        a.root.mkdir("only-in-a", 0o755)
        b.root.mkdir("only-in-b", 0o755)
        assert "only-in-b" not in a.root.listdir()
        assert "only-in-a" not in b.root.listdir()
        assert os.path.isdir(os.path.join(a.export, "only-in-a"))
        assert os.path.isdir(os.path.join(b.export, "only-in-b"))
        assert not os.path.exists(os.path.join(a.export, "only-in-b"))
    finally:
        a.close()
        b.close()


def test_guest_cannot_touch_another_guests_nodes_or_grants(world):
    sim_dir, xs = world.dir, world.xs
    a = _bad(world, 61).mount()
    b = _bad(world, 62).mount()
    try:
        with XsWireClient(domain_socket(sim_dir, 62), timeout=5) as as_b:
            assert as_b.read(b.fe_dir + "/tag") == "share"
            for path in (a.fe_dir + "/tag", a.fe_dir + "/ring-ref0"):
                with pytest.raises(XenStoreError) as ei:
                    as_b.read(path)
                assert ei.value.errno == errno.EACCES
            with pytest.raises(XenStoreError) as ei:
                as_b.write(a.fe_dir + "/state", "5")
            assert ei.value.errno == errno.EACCES
            with pytest.raises(XenStoreError) as ei:
                as_b.write(b.be + "/state", "4")  # its own backend dir is read-only to it
            assert ei.value.errno == errno.EACCES
        ref = int(xs.read(a.fe_dir + "/ring-ref0"))
        with pytest.raises(PlatformError) as ei:
            SimGrantMapper(sim_dir, 62).map(61, [ref])  # granted to dom0, not dom62
        assert ei.value.errno == errno.EPERM
        assert a.works() and b.works()
    finally:
        a.close()
        b.close()


def test_ring_order_above_the_configured_maximum_closes_the_device():
    """max_ring_order = 4 is advertised and enforced: a frontend writing order 6 is closed, naming both."""
    w = World("mro", max_ring_order=4)
    try:
        ok = RealGuest(w, 41).mount()
        assert ok.fe.order == 4 and ok.works()
        g = _bad(w, 42, misbehave=Misbehave(ring_order=6))
        try:
            with pytest.raises(FrontendError):
                g.fe.connect()
            g.wait_closed()
            log = w.daemon.wait_log("ring_order 6 above the maximum 4")
            assert any("dom42/dev0" in ln for ln in log.splitlines() if "ring_order 6" in ln)
        finally:
            g.close()
        assert ok.works("after"), "the good guest stopped working"
        ok.close()
    finally:
        w.close()
