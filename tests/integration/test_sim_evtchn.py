"""Simulated event channels across processes: binding, notify, masking, unbind, crash cleanup.

Every wait is a poll on the handle's fd with a deadline; a peer process is driven over stdin.
"""
from __future__ import annotations

import errno
import mmap
import os
import select
import struct
import subprocess
import sys
import time

import pytest

from xen9p_common.errors import PlatformError
from xen9p_common.platform.sim import make_platform
from xen9p_common.platform.sim.evtchn import NR_PORTS, SimEventChannels

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST = 5
DEADLINE = 30.0

# A peer holding one handle of domain argv[2], obeying one command per line.
PEER = r"""
import mmap, os, select, struct, sys, time
from xen9p_common.platform.sim.evtchn import SimEventChannels
ev = SimEventChannels(sys.argv[1], int(sys.argv[2]))
print("ready", flush=True)
for line in sys.stdin:
    cmd, *a = line.split()
    if cmd == "alloc":
        print(ev.alloc_unbound(int(a[0])), flush=True)
    elif cmd == "bind":
        print(ev.bind_interdomain(int(a[0]), int(a[1])), flush=True)
    elif cmd == "notify":
        ev.notify(int(a[0])); print("ok", flush=True)
    elif cmd == "unmask":
        ev.unmask(int(a[0])); print("ok", flush=True)
    elif cmd == "unbind":
        ev.unbind(int(a[0])); print("ok", flush=True)
    elif cmd == "wait":
        deadline = time.monotonic() + float(a[0]); ports = []
        while not ports and select.select([ev], [], [], max(0, deadline - time.monotonic()))[0]:
            ports = ev.pending()
        print("ports", *ports, flush=True)
    elif cmd == "produce":
        # write 1..n into a shared counter, notifying after each store
        fd = os.open(a[0], os.O_RDWR); m = mmap.mmap(fd, 4096)
        for i in range(1, int(a[2]) + 1):
            struct.pack_into("<I", m, 0, i); ev.notify(int(a[1]))
        print("ok", flush=True)
    elif cmd == "exit":
        break
"""


class Peer:
    def __init__(self, sim_dir, domid: int) -> None:
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-c", PEER, str(sim_dir), str(domid)],
                                     env=env, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        assert self._answer() == ["ready"]

    def _answer(self) -> list[str]:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if select.select([self.proc.stdout], [], [], deadline - time.monotonic())[0]:
                line = self.proc.stdout.readline()
                if not line:
                    pytest.fail(f"peer exited with {self.proc.wait()}")
                return line.split()
        self.proc.kill()
        pytest.fail("peer did not answer in time")

    def __call__(self, *words) -> list[str]:
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(DEADLINE)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("exit\n")
            self.proc.stdin.close()
            self.proc.wait(DEADLINE)


def wait_ports(ev, timeout: float = DEADLINE) -> list[int]:
    """Poll the handle until some port fired (spurious wakeups return []) or the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([ev], [], [], left)[0]:
            return []
        ports = ev.pending()
        if ports:
            return ports


def quiet(ev) -> bool:
    """Nothing is deliverable right now (notify is synchronous, so no waiting is needed)."""
    return not select.select([ev], [], [], 0)[0] and ev.pending() == []


@pytest.fixture
def peer(tmp_path):
    p = Peer(tmp_path, GUEST)
    yield p
    p.close()


@pytest.fixture
def backend(tmp_path):
    ev = SimEventChannels(str(tmp_path), 0)
    yield ev
    ev.close()


def connect(peer, backend) -> tuple[int, int]:
    """Guest allocates, backend binds, and the bind's own event is consumed."""
    gport = int(peer("alloc", 0)[0])
    lport = backend.bind_interdomain(GUEST, gport)
    assert wait_ports(backend) == [lport]  # Xen sets a freshly bound port pending
    backend.unmask(lport)
    assert quiet(backend)
    return gport, lport


def test_notify_across_processes_both_ways(peer, backend):
    gport, lport = connect(peer, backend)
    assert peer("notify", gport) == ["ok"]
    assert wait_ports(backend) == [lport]
    backend.unmask(lport)
    backend.notify(lport)
    assert peer("wait", DEADLINE) == ["ports", str(gport)]


def test_masked_port_keeps_one_notification_for_unmask(peer, backend):
    gport, lport = connect(peer, backend)
    peer("notify", gport)
    assert wait_ports(backend) == [lport]
    # Fired and not unmasked yet: more events only set the pending bit.
    peer("notify", gport)
    peer("notify", gport)
    assert quiet(backend)
    backend.unmask(lport)
    assert wait_ports(backend) == [lport]  # delivered after unmask, not lost...
    assert quiet(backend)                   # ...and only once
    backend.unmask(lport)
    assert quiet(backend)  # nothing pending: unmasking delivers nothing


def test_no_lost_wakeup_under_a_racing_producer(tmp_path, peer, backend):
    gport, lport = connect(peer, backend)
    counter = tmp_path / "counter"
    counter.write_bytes(bytes(4096))
    n = 2000
    peer.proc.stdin.write(f"produce {counter} {gport} {n}\n")
    peer.proc.stdin.flush()
    with open(counter, "r+b") as f:
        shared = mmap.mmap(f.fileno(), 4096)
    seen, wakeups = 0, 0
    deadline = time.monotonic() + DEADLINE
    while seen < n and time.monotonic() < deadline:
        if wait_ports(backend, deadline - time.monotonic()) == [lport]:
            wakeups += 1
            backend.unmask(lport)
        # rescan after unmask, like a ring consumer must
        seen = struct.unpack_from("<I", shared, 0)[0]
    assert seen == n
    assert peer._answer() == ["ok"]
    assert 1 <= wakeups <= n
    shared.close()


def test_unbind_by_the_backend(peer, backend):
    gport, lport = connect(peer, backend)
    backend.unbind(lport)
    with pytest.raises(PlatformError) as e:
        backend.unbind(lport)
    assert e.value.errno == errno.ENOTCONN
    with pytest.raises(PlatformError) as e:
        backend.notify(lport)
    assert e.value.errno == errno.ENOTCONN
    # The guest's port is unbound again: sending is a silent no-op, rebinding works.
    assert peer("notify", gport) == ["ok"]
    assert quiet(backend)
    again = backend.bind_interdomain(GUEST, gport)
    assert wait_ports(backend) == [again]


def test_unbind_by_the_guest(peer, backend):
    gport, lport = connect(peer, backend)
    assert peer("unbind", gport) == ["ok"]
    backend.notify(lport)  # the peer is gone: no error, nothing delivered
    assert peer("wait", 0) == ["ports"]
    with pytest.raises(PlatformError):
        backend.bind_interdomain(GUEST, gport)


def test_bind_refusals(peer, backend):
    other = int(peer("alloc", 7)[0])  # may only be bound by dom7
    with pytest.raises(PlatformError) as e:
        backend.bind_interdomain(GUEST, other)
    assert e.value.errno == errno.EINVAL
    for port in (0, NR_PORTS, other + 1):  # out of range / never allocated
        with pytest.raises(PlatformError) as e:
            backend.bind_interdomain(GUEST, port)
        assert e.value.errno == errno.EINVAL
    gport, _ = connect(peer, backend)
    with pytest.raises(PlatformError):
        backend.bind_interdomain(GUEST, gport)  # already bound
    assert backend.pending() == []


def test_crashed_backend_ports_are_reclaimed(tmp_path):
    guest = SimEventChannels(str(tmp_path), GUEST)
    dead = Peer(tmp_path, 0)
    try:
        gport = guest.alloc_unbound(0)
        assert int(dead("bind", GUEST, gport)[0]) > 0
        dead.kill()
        guest.notify(gport)  # into a dead process: must not raise
        restarted = SimEventChannels(str(tmp_path), 0)
        lport = restarted.bind_interdomain(GUEST, gport)
        assert wait_ports(restarted) == [lport]
        restarted.unmask(lport)
        guest.notify(gport)
        assert wait_ports(restarted) == [lport]
        restarted.close()
    finally:
        dead.close()
        guest.close()


def test_close_unbinds_every_port(tmp_path, peer):
    be = make_platform(str(tmp_path)).evtchn()
    g1, g2 = int(peer("alloc", 0)[0]), int(peer("alloc", 0)[0])
    l1, l2 = be.bind_interdomain(GUEST, g1), be.bind_interdomain(GUEST, g2)
    assert l1 != l2
    seen = set()
    while seen != {l1, l2}:
        ports = wait_ports(be)
        assert ports, "bind events missing"
        seen.update(ports)
    be.close()
    fresh = SimEventChannels(str(tmp_path), 0)
    assert fresh.bind_interdomain(GUEST, g1) > 0  # the guest port is free for a new backend
    fresh.close()


def test_pending_on_an_idle_handle(backend):
    assert backend.pending() == []
    assert quiet(backend)
