"""Harness for end-to-end tests with the REAL ring worker: a xen9pd world, simulated guests, a guest load.

The load counts every request sent and every reply received, so a test can prove each was answered once.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time


from tests.e2e.xen9pd_helpers import ROOT, SimXenstored, Xen9pd, env_for_children, procs_with, ring  # noqa: F401 (ring: re-exported)
from tests.waiting import wait_for
from xen9p_sim.client import Client, P9Error
from xen9p_common.errors import Xen9pError
from xen9p_common.p9 import constants as c
from xen9p_common.p9 import messages as m
from xen9p_sim.frontend.linux import Misbehave, SimFrontend, mount
from xen9p_common.xenbus import XenbusState
from xen9p_supervisor import toolstack
from xen9p_sim.cli import attach_device, destroy_domain

DEADLINE = 20.0
REAL_WORKER = f"{sys.executable} -m xen9p_worker"


class World:
    """A sim xenstored and a xen9pd with real workers in one temporary directory."""

    def __init__(self, prefix: str, **settings) -> None:
        self.dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        self.xsd = SimXenstored(self.dir)
        self.xs = self.xsd.client()
        self.settings = dict(worker_cmd=REAL_WORKER, device_state="auto", heartbeat_timeout=10.0,
                             ready_timeout=10.0, kill_grace=2.0, close_timeout=5.0)
        self.settings.update(settings)
        self.daemon: Xen9pd | None = None
        self.start_daemon()

    def start_daemon(self, **settings) -> Xen9pd:
        conf = dict(self.settings)
        conf.update(settings)
        self.daemon = Xen9pd(self.dir, self.dir, **conf)
        return self.daemon

    def close(self) -> None:
        self.xs.close()
        if self.daemon is not None:
            self.daemon.stop()
        self.xsd.stop()
        leftover = procs_with(self.dir)
        for p in leftover:
            p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not leftover, f"processes left behind: {[p.pid for p in leftover]}"


class RealGuest:
    """One attached device, its simulated frontend and (after mount()) its 9P client."""

    def __init__(self, world: World, domid: int, *, tag: str = "share", model: str = "passthrough",
                 limits: dict | None = None, misbehave: Misbehave | None = None, devid: int = 0) -> None:
        self.world = world
        self.xs = world.xs
        self.domid, self.devid = domid, devid
        self.name = f"dom{domid}/dev{devid}"
        self.export = os.path.join(world.dir, f"export{domid}" + (f"-{devid}" if devid else ""))
        os.makedirs(self.export, exist_ok=True)
        self.be, self.fe_dir = attach_device(self.xs, domid=domid, devid=devid, path=self.export, tag=tag,
                                             security_model=model, limits=limits)
        self.fe = SimFrontend(world.dir, domid, tag, misbehave=misbehave, timeout=10)
        self.client: Client | None = None
        self.root = None

    def mount(self) -> "RealGuest":
        self.client, self.root = mount(self.fe)
        return self

    def remount(self) -> "RealGuest":
        """After the backend closed us: a fresh handshake and a fresh 9P session (what a remount does)."""
        if self.client is not None:
            self.client.close()
        tr = self.fe.reconnect()
        self.client = Client(tr, timeout=30, name=f"9p-{self.name}")
        self.client.version(128 * 1024 + 24)
        self.root = self.client.attach("", "root", 0)
        return self

    def be_state(self) -> XenbusState | None:
        v = self.xs.read(self.be + "/state")
        return XenbusState(int(v)) if v and v.isdigit() else None

    def wait_closed(self) -> None:
        wait_for(lambda: self.be_state() == XenbusState.Closed, DEADLINE, f"{self.name} backend Closed")

    def works(self, name: str = "probe") -> bool:
        """A few round trips through both rings, checked on the host."""
        self.root.mkdir(name, 0o755)
        with self.root.walk([name]) as d:
            d.getattr()
        self.root.rmdir(name)
        return not os.path.exists(os.path.join(self.export, name))

    def close(self, destroy: bool = True) -> None:
        """Unmount and detach; destroy=False leaves the domain (and its other devices) alone."""
        if self.client is not None:
            self.client.close()
        self.fe.close()
        try:
            toolstack.detach(self.xs, domid=self.domid, devid=self.devid, timeout=10)
        except Exception:  # noqa: BLE001 - already gone
            pass
        if destroy:
            destroy_domain(self.xs, self.domid)


class Load:
    """Guest load on one mount: threads doing checked I/O and namespace ops, plus async bursts, plus
    (files > 0) threads that create files, append checksummed records, rename and read them back.

    Every frame sent and every reply received is counted; a reply for a tag not outstanding
    (answered twice, or never asked) is recorded in `stray`. The longest a request waited for its
    reply is `max_latency` (seconds). verify_files() checks on the host that every appended record
    is there exactly once.
    """

    RECORDS = 8  # appended per file before it is renamed

    def __init__(self, client: Client, root, threads: int = 6, burst: int = 48, files: int = 0) -> None:
        self.client, self.root = client, root
        self.sent = self.replies = self.ops = 0
        self.max_latency = 0.0
        self._sent_at: dict[int, float] = {}
        self.files: dict[str, bytes] = {}  # final name -> the content the guest wrote
        self.stray: list[int] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._orig_send, self._orig_dispatch = client.send_frame, client._dispatch
        client.send_frame = self._send  # instance attributes: the reader thread looks them up per frame
        client._dispatch = self._dispatch
        self.threads = [threading.Thread(target=self._guard, args=(self._io, i), daemon=True) for i in range(threads)]
        self.threads.append(threading.Thread(target=self._guard, args=(self._ns, 0), daemon=True))
        self.threads.append(threading.Thread(target=self._guard, args=(self._burst, burst), daemon=True))
        self.threads += [threading.Thread(target=self._guard, args=(self._files, i), daemon=True)
                         for i in range(files)]

    def _send(self, frame) -> None:
        _, _, tag = m.peek_header(frame)
        with self._lock:
            self.sent += 1
            self._sent_at[tag] = time.monotonic()
        self._orig_send(frame)

    def _dispatch(self, frame) -> None:
        _, _, tag = m.peek_header(frame)
        with self.client._lock:
            known = tag in self.client._pending
        with self._lock:
            self.replies += 1
            t0 = self._sent_at.pop(tag, None)
            if t0 is not None:
                self.max_latency = max(self.max_latency, time.monotonic() - t0)
            if not known:
                self.stray.append(tag)
        self._orig_dispatch(frame)

    def reset_latency(self) -> None:
        with self._lock:
            self.max_latency = 0.0

    def _count(self) -> None:
        with self._lock:
            self.ops += 1

    def _guard(self, fn, arg) -> None:
        try:
            fn(arg)
        except (Xen9pError, OSError, AssertionError) as e:
            self.errors.append(f"{fn.__name__}({arg}): {type(e).__name__}: {e}")

    def _io(self, i: int) -> None:
        rnd = random.Random(i)
        name = f"load-{i}"
        with self.root.create(name, c.L_O_RDWR | c.L_O_CREAT, 0o644) as f:
            while not self._stop.is_set():
                off = rnd.randrange(0, 64) * 4096
                data = rnd.randbytes(rnd.choice((100, 4096, 20000)))
                assert f.write(data, off) == len(data)
                got = f.read(off, len(data))
                assert got == data, f"{name}: read back {len(got)} bytes differing at offset {off}"
                self._count()
        self.root.unlink(name)

    def _ns(self, _: int) -> None:
        n = 0
        while not self._stop.is_set():
            d = f"dir-{n}"
            self.root.mkdir(d, 0o755)
            with self.root.walk([d]) as fd:
                fd.getattr()
            self.root.rmdir(d)
            n += 1
            self._count()

    def _files(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            tmp, final = f"f{i}-{n}.tmp", f"f{i}-{n}.dat"
            want = b""
            with self.root.create(tmp, c.L_O_RDWR | c.L_O_CREAT | c.L_O_APPEND, 0o644) as f:
                for k in range(self.RECORDS):
                    payload = f"{i}:{n}:{k}:{os.urandom(24).hex()}"
                    rec = f"{payload} {hashlib.sha256(payload.encode()).hexdigest()}\n".encode()
                    assert f.write(rec, 0) == len(rec)  # O_APPEND: a write applied twice shows as a duplicate
                    want += rec
                got = f.read(0, len(want) + 100)
                assert got == want, (f"{tmp}: read back differs: {len(got.splitlines())} records "
                                     f"({len(got)} bytes), {self.RECORDS} written ({len(want)} bytes)")
            self.root.rename(tmp, self.root, final)
            with self.root.walk([final]) as f2, f2.open(c.L_O_RDONLY) as f3:
                assert f3.read(0, len(want) + 100) == want, f"{final}: read back after rename differs"
            self.files[final] = want
            n += 1
            self._count()

    def verify_files(self, export: str) -> int:
        """Every renamed file holds exactly its records, each once and intact; returns how many files."""
        for name, want in self.files.items():
            with open(os.path.join(export, name), "rb") as f:
                got = f.read()
            recs = got.decode().splitlines()
            assert got == want, f"{name}: {len(recs)} records on the host, {len(want.splitlines())} written"
            for r in recs:
                payload, _, digest = r.partition(" ")
                assert hashlib.sha256(payload.encode()).hexdigest() == digest, f"{name}: corrupt record {r!r}"
        return len(self.files)

    def _burst(self, size: int) -> None:
        while not self._stop.is_set():
            futs = [self.client.rpc_async(m.Tgetattr, self.root.fid, c.GETATTR_BASIC) for _ in range(size)]
            for fut in futs:
                self.client.wait(fut)
            self._count()

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def wait_ops(self, more: int, what: str = "guest ops") -> None:
        """Wait until `more` further operations completed (the load is making progress)."""
        target = self.ops + more
        wait_for(lambda: self.ops >= target or self.errors, DEADLINE, what)
        assert not self.errors, self.errors

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(DEADLINE)
        assert not any(t.is_alive() for t in self.threads), "load threads stuck"
        self.client.send_frame, self.client._dispatch = self._orig_send, self._orig_dispatch


def wait_new_worker(daemon: Xen9pd, name: str, old_pid: int) -> dict:
    return wait_for(lambda: (r := ring(daemon, name))["pid"] not in (None, old_pid) and r["state"] == "running"
                    and r, DEADLINE, f"{name} serving again with a new pid")


def xen9pctl(daemon: Xen9pd, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xen9p_supervisor.xen9pctl", "--control", daemon.control, *args],
                          capture_output=True, text=True, cwd=ROOT, env=env_for_children(), timeout=timeout)


def p9_errno(fn) -> int | None:
    """Run fn(); the 9P errno it failed with, or None."""
    try:
        fn()
    except P9Error as e:
        return e.errno
    return None


def shut_down(loads, guests, world) -> None:
    """Stop every load, close every guest, then the world (which checks that nothing of it is left)."""
    for ld in loads:
        ld._stop.set()
    for g in guests:
        g.close()
    world.close()
