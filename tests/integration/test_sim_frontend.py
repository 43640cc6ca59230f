"""The simulated Linux-like frontend against a tiny in-test backend: handshake, ring transport, teardown.

The backend maps the rings with the sim grant mapper, binds the ports and answers with the
real server dispatcher when it exists (xen9p_worker.dispatch), else with a small stand-in server.
"""
from __future__ import annotations

import collections
import errno
import os
import select
import shutil
import tempfile
import threading
import time

import pytest

from tests.waiting import wait_for
from xen9p_sim.client import Client
from xen9p_common.errors import RingError
from xen9p_common.p9 import messages as m
from xen9p_common.platform.sim import sim_paths
from xen9p_common.platform.sim.evtchn import SimEventChannels
from xen9p_sim.frontend.linux import (LINUX_DEFAULT_MSIZE, FrontendError, Misbehave, SimFrontend,
                                                flood_tflush, mount, transport_maxsize)
from xen9p_common.platform.sim.grants import SimGrantMapper
from xen9p_sim.xenstore.xenstored import XenstoredServer
from xen9p_common.platform.xswire import XsWireClient
from xen9p_common.ring import BackendRing, Intf
from xen9p_common.xenbus import XenbusState, parse_state
from xen9p_supervisor import toolstack
from xen9p_sim.cli import create_domain

DOMID = 7
DEADLINE = 20.0


class StandInServer:
    """Answers the few messages the transport tests send; Tread returns a pattern of `count` bytes."""

    def __init__(self, max_msize: int) -> None:
        self.max_msize = max_msize
        self.msize = max_msize
        self.seen: list[tuple[int, int]] = []  # (ring, tag)
        self.writes: dict[int, bytes] = {}

    def submit(self, ring: int, frame: bytes, reply) -> None:
        reply(self.answer(ring, frame))

    def answer(self, ring: int, frame: bytes) -> bytes:
        req = m.decode(frame)
        self.seen.append((ring, req.tag))
        if isinstance(req, m.Tversion):
            self.msize = min(req.msize, self.max_msize)
            return m.encode(m.Rversion(req.tag, self.msize, "9P2000.L"))
        if isinstance(req, m.Tattach):
            return m.encode(m.Rattach(req.tag, m.Qid(0x80, 0, 1)))
        if isinstance(req, m.Twalk):
            return m.encode(m.Rwalk(req.tag, tuple(m.Qid(0, 0, 2 + i) for i in range(len(req.wnames)))))
        if isinstance(req, m.Tclunk):
            return m.encode(m.Rclunk(req.tag))
        if isinstance(req, m.Tflush):
            return m.encode(m.Rflush(req.tag))
        if isinstance(req, m.Tread):
            data = bytes((req.offset + i) & 0xFF for i in range(req.count))
            return m.encode(m.Rread(req.tag, data))
        if isinstance(req, m.Twrite):
            self.writes[req.offset] = bytes(req.data)
            return m.encode(m.Rwrite(req.tag, len(req.data)))
        return m.encode(m.Rlerror(req.tag, errno.EOPNOTSUPP))


class MiniBackend:
    """dom0's side of one device, in a thread: features, InitWait, map + bind, Connected, serve."""

    def __init__(self, sim_dir: str, socket_path: str, domid: int, devid: int = 0, *,
                 max_rings: int = 4, max_order: int = 9, versions: str = "1",
                 server: StandInServer | None = None) -> None:
        self.sim_dir = sim_dir
        self.xs = XsWireClient(socket_path, timeout=10)
        self.domid, self.devid = domid, devid
        self.be = toolstack.backend_path(0, "xen_9pfs", domid, devid)
        self.fe = toolstack.frontend_path(domid, devid)
        self.max_rings, self.max_order, self.versions = max_rings, max_order, versions
        self.server = server or StandInServer(512 * 1024)
        self.error: Exception | None = None
        self.connects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "MiniBackend":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.xs.close()

    def be_state(self) -> XenbusState | None:
        return parse_state(self.xs.read(self.be + "/state"))

    def fe_state(self) -> XenbusState | None:
        return parse_state(self.xs.read(self.fe + "/state"))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._advertise()
            st = self._wait_fe({XenbusState.Initialised, XenbusState.Closing, XenbusState.Closed})
            if st is None:
                return
            if st == XenbusState.Initialised:
                try:
                    self._serve()
                except Exception as e:  # noqa: BLE001 - reported to the test, like xen9pd's failure path
                    self.error = e
                    self._close()
            else:
                self._close()
            # Closed: only a frontend back at Initialising gets a fresh handshake.
            if not self._wait_fe({XenbusState.Initialising}):
                return

    def _close(self) -> None:
        self.xs.write(self.be + "/state", str(int(XenbusState.Closed)))

    def _advertise(self) -> None:
        self.xs.write(self.be + "/versions", self.versions)
        self.xs.write(self.be + "/max-rings", str(self.max_rings))
        self.xs.write(self.be + "/max-ring-page-order", str(self.max_order))
        self.xs.write(self.be + "/state", str(int(XenbusState.InitWait)))

    def _wait_fe(self, want: set[XenbusState]) -> XenbusState | None:
        while not self._stop.is_set():
            st = self.fe_state()
            if st in want:
                return st
            time.sleep(0.01)
        return None

    def _serve(self) -> None:
        n = int(self.xs.read(self.fe + "/num-rings"))
        mapper = SimGrantMapper(self.sim_dir, 0)
        ev = SimEventChannels(self.sim_dir, 0)
        maps, rings, ports = [], [], []
        try:
            for i in range(n):
                ref = int(self.xs.read(f"{self.fe}/ring-ref{i}"))
                port = int(self.xs.read(f"{self.fe}/event-channel-{i}"))
                imap = mapper.map(self.domid, [ref])
                maps.append(imap)
                order, refs = Intf(imap.buf).read_refs(self.max_order)
                maps.append(mapper.map(self.domid, refs))
                dmap = maps[-1]
                rings.append(BackendRing(imap.buf, dmap.buf, order, self.server.max_msize))
                ports.append(ev.bind_interdomain(self.domid, port))
            self.xs.write(self.be + "/state", str(int(XenbusState.Connected)))
            self.connects += 1
            self._loop(ev, rings, ports)
        finally:
            for r in rings:
                r.release()
            rings.clear()
            for mp in maps:
                mp.unmap()
            ev.close()

    def _loop(self, ev: SimEventChannels, rings: list[BackendRing], ports: list[int]) -> None:
        backlog: list[collections.deque] = [collections.deque() for _ in rings]
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

        def replier(i: int):
            def reply(frame) -> None:  # may run on a dispatcher pool thread
                backlog[i].append(bytes(frame))
                os.write(wake_w, b"x")
            return reply

        try:
            while not self._stop.is_set():
                st = self.fe_state()
                if st in (XenbusState.Closing, XenbusState.Closed, XenbusState.Initialising):
                    self._close()
                    return
                r_ok = select.select([ev, wake_r], [], [], 0.05)[0]
                if wake_r in r_ok:
                    while True:
                        try:
                            os.read(wake_r, 4096)
                        except BlockingIOError:
                            break
                if ev in r_ok:
                    for p in ev.pending():
                        ev.unmask(p)
                for i, r in enumerate(rings):
                    try:
                        for idx, size in r.requests():
                            frame = r.copy_request(idx, size)
                            r.consume(size)
                            self.server.submit(i, frame, replier(i))
                    except RingError:
                        self._close()
                        return
                    sent = False
                    while backlog[i] and r.write_reply(backlog[i][0]):
                        backlog[i].popleft()
                        sent = True
                    if sent:
                        ev.notify(ports[i])
        finally:
            os.close(wake_r)
            os.close(wake_w)


class DispatchServer:
    """The real server dispatcher (xen9p_worker.dispatch) over a local export, one session per device."""

    def __init__(self, export: str, model: str = "passthrough") -> None:
        from xen9p_worker.backend.local import LocalBackend
        from xen9p_worker.dispatch import Server
        self.max_msize = 512 * 1024
        self.server = Server(LocalBackend(export, model))
        self.session = self.server.session()
        self.seen: list[tuple[int, int]] = []

    def submit(self, ring: int, frame: bytes, reply) -> None:
        self.seen.append((ring, m.peek_header(frame)[2]))
        self.session.submit(frame, reply)

    def close(self) -> None:
        self.session.close()
        self.server.close()


@pytest.fixture
def sim():
    d = tempfile.mkdtemp(prefix="fe", dir="/tmp")
    server = XenstoredServer(sim_paths(d)["xenstored"]).start()
    dom0 = XsWireClient(server.socket_path, timeout=10)
    create_domain(dom0, DOMID)
    export = os.path.join(d, "export")
    os.mkdir(export)
    toolstack.attach(dom0, domid=DOMID, path=export, tag="share")
    yield d, server, dom0
    dom0.close()
    server.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def backend(sim):
    """backend(**options) starts a MiniBackend on the test's device; every one started is stopped at teardown."""
    started: list[MiniBackend] = []

    def start(**kw) -> MiniBackend:
        d, server, _ = sim
        started.append(MiniBackend(d, server.socket_path, DOMID, **kw).start())
        return started[-1]
    yield start
    for be in started:
        be.stop()


@pytest.fixture
def frontend(sim, backend):
    """frontend(**options) makes the Linux-like frontend of the test's device; closed at teardown (before the
    backend stops). A test that checks what follows the close calls fe.close() itself (closing twice is harmless)."""
    made: list[SimFrontend] = []

    def make(**kw) -> SimFrontend:
        made.append(SimFrontend(sim[0], DOMID, "share", **kw))
        return made[-1]
    yield make
    for fe in made:
        fe.close()


def test_handshake_writes_linux_keys_and_connects(sim, backend, frontend):
    dom0 = sim[2]
    be = backend()
    fe = frontend()
    tr = fe.connect()
    fe_dir = toolstack.frontend_path(DOMID, 0)
    assert dom0.read(fe_dir + "/version") == "1"
    assert dom0.read(fe_dir + "/num-rings") == "2"
    assert int(dom0.read(fe_dir + "/ring-ref0")) > 0 and int(dom0.read(fe_dir + "/ring-ref1")) > 0
    assert int(dom0.read(fe_dir + "/event-channel-0")) > 0
    assert dom0.read(fe_dir + "/state") == "4"
    assert fe.order == 9 and len(tr.rings) == 2
    assert tr.maxsize == 512 * 1024
    fe.close()
    assert be.error is None
    assert wait_for(lambda: be.be_state() == XenbusState.Closed, DEADLINE, what="backend Closed")


def test_ring_order_follows_backend_max_and_caps_msize(backend, frontend):
    backend(max_order=6)
    fe = frontend()
    client, root = mount(fe)
    assert fe.order == 6
    # order 6: 128 KiB per half, so the transport allows half of it.
    assert client.msize == transport_maxsize(6) == 64 * 1024
    assert root.qid.type == 0x80
    client.close()


def test_requests_spread_by_tag_and_big_messages_wrap(backend, frontend):
    be = backend(max_order=1)
    fe = frontend()
    client, root = mount(fe, msize=LINUX_DEFAULT_MSIZE)
    assert client.msize == 2048  # order 1: 4 KiB halves -> 2 KiB transport max
    # Tversion (tag 0xFFFF) lands on ring 1, as in Linux.
    assert be.server.seen[0] == (1, 0xFFFF)
    f = root.walk("file")
    for off in range(0, 40 * 1500, 1500):  # many laps of a 4 KiB ring
        assert f.read_once(off, 1500) == bytes((off + i) & 0xFF for i in range(1500))
    tags = [(ring, tag) for ring, tag in be.server.seen[1:]]
    assert all(ring == tag % 2 for ring, tag in tags)
    assert {ring for ring, _ in tags} == {0, 1}
    client.close()


def test_many_requests_in_flight_from_threads(backend, frontend):
    backend(max_order=2)
    fe = frontend()
    client, root = mount(fe)
    f = root.walk("x")
    errors = []

    def worker(k: int) -> None:
        try:
            for j in range(30):
                off = k * 1000 + j
                assert f.read_once(off, 700) == bytes((off + i) & 0xFF for i in range(700))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert not errors
    assert fe.transport.requests >= 8 * 30
    client.close()


def test_refuses_backend_with_fewer_than_two_rings(sim, backend, frontend):
    dom0 = sim[2]
    backend(max_rings=1)
    fe = frontend(timeout=5)
    with pytest.raises(FrontendError, match="max-rings 1"):
        fe.connect()
    # xenbus_dev_fatal: the frontend goes Closing, and wrote no ring keys.
    assert dom0.read(toolstack.frontend_path(DOMID, 0) + "/state") == "5"
    assert dom0.read(toolstack.frontend_path(DOMID, 0) + "/num-rings") is None


def test_refuses_bad_versions(backend, frontend):
    backend(versions="2")
    fe = frontend(timeout=5)
    with pytest.raises(FrontendError, match="versions"):
        fe.connect()


def test_waits_for_initwait_with_a_timeout(sim):
    d, _, _ = sim
    with SimFrontend(d, DOMID, "share", timeout=0.5) as fe:
        t0 = time.monotonic()
        with pytest.raises(FrontendError, match="InitWait"):
            fe.connect()
        assert time.monotonic() - t0 < 5


def test_backend_close_ends_the_transport_and_reconnect_works(backend, frontend):
    be = backend()
    fe = frontend()
    client, root = mount(fe)
    # The backend closes on its own (as xen9pd on a detach or a failure).
    be.xs.write(be.be + "/state", str(int(XenbusState.Closing)))
    assert fe.backend_closed.wait(DEADLINE)
    assert wait_for(lambda: fe.state == XenbusState.Closed, DEADLINE, what="frontend Closed")
    assert wait_for(lambda: client.closed, DEADLINE, what="client sees the closed transport")
    client.close()
    # The backend's loop saw our Closed; the frontend comes back at Initialising.
    client2, root2 = mount_after(fe)
    assert root2.walk("y").qid is not None
    assert be.connects == 2
    client2.close()
    fe.close()
    assert be.error is None


def mount_after(fe: SimFrontend):
    fe.reconnect()
    client = Client(fe.transport, name="again")
    client.version(LINUX_DEFAULT_MSIZE)
    return client, client.attach("", "root", 0)


def test_handshake_misbehaviour_is_written_as_asked(sim, backend, frontend):
    dom0 = sim[2]
    backend()
    fe = frontend(misbehave=Misbehave(version="7", num_rings=9, ref_zero=True), timeout=1)
    with pytest.raises(FrontendError):
        fe.connect()  # the mini backend does not validate: it never connects 9 rings
    fe_dir = toolstack.frontend_path(DOMID, 0)
    assert dom0.read(fe_dir + "/version") == "7"
    assert dom0.read(fe_dir + "/num-rings") == "9"
    assert dom0.read(fe_dir + "/ring-ref0") == "0"


def test_ring_order_above_max_is_written_in_the_intf_page(backend, frontend):
    be = backend(max_order=3)
    fe = frontend(misbehave=Misbehave(ring_order=5), timeout=2)
    with pytest.raises(FrontendError):
        fe.connect()
    assert be.error is not None and "above the maximum" in str(be.error)


def test_garbage_size_breaks_the_ring(backend, frontend):
    be = backend()
    fe = frontend()
    client, _ = mount(fe)
    fe.inject_garbage_size(0, size=3)
    assert wait_for(lambda: be.be_state() == XenbusState.Closed, DEADLINE, what="backend Closed")
    assert fe.backend_closed.wait(DEADLINE)
    client.close()


def test_index_beyond_ring_breaks_the_ring(backend, frontend):
    be = backend()
    fe = frontend()
    client, _ = mount(fe)
    fe.inject_index_beyond_ring(1)
    assert wait_for(lambda: be.be_state() == XenbusState.Closed, DEADLINE, what="backend Closed")
    client.close()


def test_half_request_waits_until_completed(backend, frontend):
    be = backend()
    fe = frontend()
    client, root = mount(fe)
    frame = m.encode(m.Tclunk(1000, 99))  # tag 1000 -> ring 0, outside the client's bookkeeping
    seen = len(be.server.seen)
    complete = fe.inject_half_request(frame, ring=0)
    # The backend must not take half a request; the device keeps serving others.
    assert root.walk("z").qid is not None
    assert (0, 1000) not in be.server.seen[seen:]
    complete()
    assert wait_for(lambda: (0, 1000) in be.server.seen, DEADLINE, what="the completed request")
    client.close()


def test_tflush_flood_is_answered(backend, frontend):
    backend(max_order=1)
    fe = frontend()
    client, _ = mount(fe)
    assert flood_tflush(client, 500) == 500
    client.close()


def test_never_consuming_replies_fills_the_in_ring(backend, frontend):
    backend(max_order=0)
    fe = frontend(misbehave=Misbehave(never_consume=True))
    tr = fe.connect()
    for tag in range(0, 800, 2):  # ring 0 only; 400 Rflush outgrow the 2 KiB IN half
        tr.send(m.encode(m.Tflush(tag, 1)))
    ring = tr.rings[0]
    # The IN half (2 KiB) fills with Rflush frames and stays full.
    assert wait_for(lambda: ring.fr.replies_queued() > 2048 - 7, DEADLINE, what="IN ring full")
    assert tr.replies == 0


def test_vanish_leaves_grants_to_the_backend(sim, backend):
    be = backend()
    fe = SimFrontend(sim[0], DOMID, "share")  # never closed: it vanished
    client, root = mount(fe)
    fe.vanish(m.encode(m.Tclunk(4, 1)))
    assert client.closed or wait_for(lambda: client.closed, DEADLINE, what="client closed")
    # Nothing was written: the frontend still says Connected, the backend still serves.
    assert be.fe_state() == XenbusState.Connected
    client.close()


def test_workloads_through_the_rings_against_the_real_dispatcher(sim, backend, frontend):
    from xen9p_sim.workloads import run_workload
    server = DispatchServer(os.path.join(sim[0], "export"))
    try:
        be = backend(server=server, max_order=4)  # 32 KiB halves: replies wrap often
        fe = frontend()
        client, root = mount(fe)
        assert client.msize == transport_maxsize(4)
        for name in ("smoke", "fsstress", "untar", "readdir", "locks"):
            s = run_workload(name, root, seed=5)
            assert s.errors == 0, (name, s.details)
            assert s.ops > 0
        assert {ring for ring, _ in server.seen} == {0, 1}
        client.close()
        fe.close()
        assert be.error is None
    finally:
        server.close()
