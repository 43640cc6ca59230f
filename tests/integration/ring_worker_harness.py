"""Test harness for ring workers: a Linux-like guest (tag % num_rings, whole requests) and real worker processes.

The guest grants its rings from SimDomainMemory and binds sim event channels; workers run as
`python -m xen9p_worker ring ...` against a DeviceState this harness creates and unlinks.
"""
from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import threading
import time
import uuid

import pytest
import zmq

from xen9p_common import control
from xen9p_sim.client import Client
from xen9p_sim.client.errors import ConnectionClosed
from xen9p_sim.client.transport import Transport
from xen9p_common.p9 import messages as M
from xen9p_common.platform.sim.evtchn import SimEventChannels
from xen9p_common.platform.sim.grants import SimDomainMemory
from xen9p_common.ring import FrontendRing, Intf, ring_size
from xen9p_worker.shared.device_state import SHM_DIR, DeviceState
from tests.waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST = 7


class GuestRing:
    def __init__(self, mem: SimDomainMemory, evt: SimEventChannels, order: int) -> None:
        n = 1 << order
        frames = mem.alloc_pages(1 + n)
        assert all(b == a + 1 for a, b in zip(frames, frames[1:]))
        self.order = order
        self.intf_ref = mem.grant_access(frames[0], 0)
        data_refs = [mem.grant_access(f, 0) for f in frames[1:]]
        self.intf = mem.pages_view(frames[0], 1)
        Intf(self.intf).setup(order, data_refs)
        self.data = mem.pages_view(frames[1], n)
        self.fr = FrontendRing(self.intf, self.data, order)
        self.port = evt.alloc_unbound(0)
        self.lock = threading.Lock()


class Guest(Transport):
    """The guest's side of all rings of one device; also a 9P client transport."""

    def __init__(self, sim_dir: str, num_rings: int, order: int, domid: int = GUEST) -> None:
        self.domid = domid
        pages = num_rings * (1 + (1 << order)) + 4
        self.mem = SimDomainMemory(sim_dir, domid, pages)
        self.evt = SimEventChannels(sim_dir, domid)
        self.rings = [GuestRing(self.mem, self.evt, order) for _ in range(num_rings)]
        self.size = ring_size(order)
        self.replies: list[tuple[int, int, bytes]] = []  # (ring, tag, frame): every reply seen
        self._ready: list[bytes] = []
        self._cv = threading.Condition()
        self._closed = False

    # -- raw frames ------------------------------------------------------------

    def ring_of(self, tag: int) -> int:
        return tag % len(self.rings)

    def send(self, frame: bytes, ring: int | None = None, timeout: float = 20.0) -> None:
        if self._closed:
            raise ConnectionClosed("guest closed")
        tag = struct.unpack_from("<H", frame, 5)[0]
        r = self.rings[self.ring_of(tag) if ring is None else ring]
        deadline = time.monotonic() + timeout
        with r.lock:
            while not r.fr.write_request(frame):
                if time.monotonic() > deadline:
                    raise ConnectionClosed("no room for a request")
                self.poll(0.01)
            self.evt.notify(r.port)

    def poll(self, timeout: float) -> int:
        """Take every whole reply off every ring; wait up to timeout for an event first if none."""
        got = self._scan()
        if got:
            return got
        select.select([self.evt.fileno()], [], [], timeout)
        for p in self.evt.pending():
            self.evt.unmask(p)
        return self._scan()

    def _scan(self) -> int:
        got = 0
        with self._cv:
            for i, r in enumerate(self.rings):
                while True:
                    rep = r.fr.read_reply()
                    if rep is None:
                        break
                    got += 1
                    self.replies.append((i, struct.unpack_from("<H", rep, 5)[0], rep))
                    self._ready.append(rep)
                if got:
                    self.evt.notify(r.port)  # in_cons moved
            if got:
                self._cv.notify_all()
        return got

    def recv_frame(self) -> bytes | None:
        while True:
            with self._cv:
                if self._ready:
                    return self._ready.pop(0)
                if self._closed:
                    return None
            self.poll(0.05)

    def take(self, tag: int, timeout: float = 10.0) -> bytes:
        """The reply with tag (raw mode: no Client reader running)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cv:
                for i, f in enumerate(self._ready):
                    if struct.unpack_from("<H", f, 5)[0] == tag:
                        return self._ready.pop(i)
            if time.monotonic() > deadline:
                raise AssertionError(f"no reply for tag {tag}")
            self.poll(0.02)

    def rpc(self, msg: M.Message, ring: int | None = None) -> M.Message:
        self.send(M.encode(msg), ring)
        rep = M.decode(self.take(msg.tag))
        return rep

    def close(self) -> None:
        self._closed = True

    def destroy(self) -> None:
        self._closed = True
        self.evt.close()
        self.mem.destroy()


class Device:
    """A device: its shared state, a guest, one worker process per ring, a supervisor socket."""

    def __init__(self, tmp_path, num_rings: int = 2, order: int = 1, max_fids: int = 256,
                 export: str | None = None, journal_slots: int = 256, threads: int = 8) -> None:
        self.tmp = str(tmp_path)
        self.sim_dir = os.path.join(self.tmp, "sim")
        os.makedirs(self.sim_dir, exist_ok=True)
        self.export = export or os.path.join(self.tmp, "export")
        os.makedirs(self.export, exist_ok=True)
        self.name = f"xen9p-test-{uuid.uuid4().hex[:12]}"
        self.num_rings = num_rings
        self.threads = threads
        self.ds = DeviceState.create(self.name, max_fids=max_fids, max_open_files=0, max_space_mb=0,
                                     export=self.export, security_model="none", msize_cap=512 * 1024 + 24,
                                     num_rings=num_rings, journal_slots=journal_slots)
        self.guest = Guest(self.sim_dir, num_rings, order)
        self.ctx = zmq.Context()
        # Linger 0 from the start: a Device left unclosed by a failed test is collected later
        # without its context's term waiting for ever on messages to workers long gone.
        self.ctx.setsockopt(zmq.LINGER, 0)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.endpoint = f"ipc://{self.tmp}/sup.sock"
        self.router.bind(self.endpoint)
        self.msgs: list[tuple[str, dict]] = []
        self.procs: dict[int, subprocess.Popen] = {}
        self.client: Client | None = None

    def argv(self, ring: int) -> list[str]:
        r = self.guest.rings[ring]
        return [sys.executable, "-m", "xen9p_worker", "ring", "--platform", "sim", "--sim-dir", self.sim_dir,
                "--domid", str(self.guest.domid), "--devid", "0", "--ring", str(ring),
                "--ring-ref", str(r.intf_ref), "--evtchn", str(r.port), "--state", self.name,
                "--export", self.export, "--security-model", "none", "--supervisor", self.endpoint,
                "--heartbeat", "0.5", "--threads", str(self.threads)]

    def start(self, ring: int | None = None, wait: bool = True, extra_env: dict | None = None) -> None:
        rings = range(self.num_rings) if ring is None else [ring]
        for k in rings:
            env = dict(os.environ, PYTHONPATH=REPO, **(extra_env or {}))
            self.procs[k] = subprocess.Popen(self.argv(k), env=env, stdin=subprocess.DEVNULL)
        if wait:
            for k in rings:
                pid = self.procs[k].pid
                self.wait_msg(lambda n, m, k=k, pid=pid: m.get("type") == "ready" and m.get("pid") == pid,
                              f"ring {k} ready")

    def pump(self, timeout: float = 0.0) -> None:
        while self.router.poll(int(timeout * 1000)):
            ident, raw = self.router.recv_multipart()
            self.msgs.append((ident.decode(), control.parse_worker_msg(raw)))
            timeout = 0

    def wait_msg(self, pred, what: str, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for name, m in self.msgs[seen:]:
                if pred(name, m):
                    return m
            seen = len(self.msgs)
            for k, p in self.procs.items():
                if p.poll() is not None and "ready" in what and f"ring {k}" in what:
                    raise AssertionError(f"worker of ring {k} exited with {p.returncode} before {what}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.msgs[-5:]}")
            self.pump(min(left, 0.1))

    def connect(self, msize: int = 65536 + 24) -> Client:
        self.client = Client(self.guest, timeout=20.0)
        self.client.version(msize)
        return self.client

    def steps_through_a_crash(self, steps: list, label: str, ring: int = 1) -> tuple[dict, object]:
        """Send (request, reply class) steps one at a time while ring `ring`'s worker (started with an
        XEN9P_RING_FAULT) is due to SIGKILL itself; when it does, start its successor without the fault.
        Every reply must be of its step's class. Returns the replies by tag and the request the worker
        died on (None: the fault never fired)."""
        victim = self.procs[ring]
        fr = self.guest.rings[ring].fr
        got: dict = {}
        died_on = None
        for msg, want in steps:
            if self.procs[ring] is victim:
                # The guest has a reply once in_prod moves; the worker retires that request (journal
                # PUBLISHED, out_cons) a moment later, maybe from an I/O thread. Let the victim retire
                # every earlier request, so the crash leaves exactly one in flight to resume (a victim
                # killed at "published" never retires the request it died on).
                wait_for(lambda: fr.request_space() == fr.size or victim.poll() is not None,
                         what=f"ring {ring} to retire earlier requests")
            self.guest.send(M.encode(msg))
            if self.procs[ring] is victim:
                def settled(tag=msg.tag):  # the reply, or the worker dead serving this request
                    self.guest.poll(0.01)
                    return victim.poll() is not None or any(t == tag for _, t, _ in self.guest.replies)
                wait_for(settled, what=f"{msg!r} answered or the worker dead")
                if victim.poll() is not None:
                    assert victim.wait() == -9
                    died_on = msg
                    self.start(ring)  # the successor, without the fault
            got[msg.tag] = r = M.decode(self.guest.take(msg.tag, timeout=15))
            assert isinstance(r, want), f"{label}: {msg!r} -> {r!r}"
        return got, died_on

    def kill(self, ring: int, sig: int = 9) -> int:
        p = self.procs[ring]
        p.send_signal(sig)
        return p.wait(timeout=15)

    def stop(self) -> dict[int, int]:
        codes = {}
        for k, p in self.procs.items():
            if p.poll() is None:
                p.terminate()
        for k, p in self.procs.items():
            try:
                codes[k] = p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[k] = p.wait()
        return codes

    def close(self) -> None:
        if self.client is not None:
            self.guest.close()
            try:
                self.client.close()
            except Exception:
                pass
        self.stop()
        self.router.close(0)
        self.ctx.term()
        self.guest.destroy()
        self.ds.close()
        self.ds.unlink()
        assert not os.path.exists(os.path.join(SHM_DIR, self.name))


@pytest.fixture
def device_factory(tmp_path):
    """Devices made by a test, each in its own directory, all closed after it."""
    made = []

    def make(**kw):
        d = Device(tmp_path / f"d{len(made)}", **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


class StubSession:
    """What a RingWorker needs of a dispatch.Session besides submit(), doing nothing: for tests
    that script the answers themselves (subclasses define submit)."""

    def __init__(self) -> None:
        self.lock_keys: dict = {}

    def cancel(self, tag: int) -> bool:
        return False

    def drop_stale_fds(self) -> int:
        return 0

    def error_frame(self, tag: int, err: int) -> bytes:
        return M.encode(M.Rlerror(tag, err))


class InprocWorker:
    """Ring 0 of `d` served by a RingWorker in this process (its own event channel handle).

    `run()` starts its loop on a thread; `close()` stops it and releases everything. Tests that
    drive the loop by hand call `w._pass()` / `w._drain()` on a worker they never run().
    """

    def __init__(self, d: Device, session, **kw) -> None:
        from xen9p_common.platform.sim.grants import SimGrantMapper
        from xen9p_worker.ring_worker import RingWorker

        r = d.guest.rings[0]
        self.evt = SimEventChannels(d.sim_dir, 0)
        self.w = RingWorker(domid=d.guest.domid, devid=0, ring=0, ring_ref=r.intf_ref, evtchn_port=r.port,
                            grants=SimGrantMapper(d.sim_dir, 0), evtchn=self.evt, device=d.ds, session=session,
                            **kw)
        self.w.setup()
        self.code: int | None = None
        self._thread: threading.Thread | None = None

    def run(self) -> "InprocWorker":
        def loop() -> None:
            self.code = self.w.run()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def close(self) -> int | None:
        if self._thread is not None:
            self.w.stop("test done")
            self._thread.join(timeout=10)
        self.w.close()
        self.evt.close()
        return self.code
