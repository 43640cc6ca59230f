"""Guest locks the host sees: held with OFD locks on the host file, through worker restarts.

Real ring workers on the simulated platform; the test process plays the host process (its own
OFD on the same file) and a second device on the same export plays another guest.
"""
from __future__ import annotations

import fcntl
import os
import struct

import pytest

from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M

from .ring_worker_harness import SHM_DIR
from tests.waiting import wait_for
from .test_ring_worker import O_RDWR, attach, ok, version

_FLOCK = struct.Struct("hhqqi4x")
WR, RD, UN = C.LOCK_TYPE_WRLCK, C.LOCK_TYPE_RDLCK, C.LOCK_TYPE_UNLCK


class HostFile:
    """The host process's own open file description on a file of the export."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR)

    def lock(self, type_: int, start: int, length: int) -> bool:
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _FLOCK.pack(type_, os.SEEK_SET, start, length, 0))
        except BlockingIOError:
            return False
        return True

    def holder(self, type_: int, start: int, length: int) -> int:
        """The type of the first lock of another holder in the way (F_UNLCK if none)."""
        return _FLOCK.unpack(fcntl.fcntl(self.fd, fcntl.F_OFD_GETLK,
                                         _FLOCK.pack(type_, os.SEEK_SET, start, length, 0)))[0]

    def close(self) -> None:
        os.close(self.fd)


def _lock(d, tag, fid, type_, start, length, proc=1, client="g", flags=0) -> int:
    return ok(d, M.Tlock(tag, fid, type_, flags, start, length, proc, client), M.Rlock).status


def _open_device(device_factory, export=None, fid=7, name="f"):
    d = device_factory(num_rings=2, order=1, export=export)
    d.start()
    version(d, 8192)
    attach(d)
    path = os.path.join(d.export, name)
    if os.path.exists(path):
        ok(d, M.Twalk(0, 0, fid, [name]), M.Rwalk)
        ok(d, M.Tlopen(2, fid, O_RDWR), M.Rlopen)
    else:
        ok(d, M.Twalk(0, 0, fid, []), M.Rwalk)
        ok(d, M.Tlcreate(2, fid, name, O_RDWR, 0o644, 0), M.Rlcreate)
    return d, HostFile(path)


@pytest.fixture
def dev(device_factory):
    d, host = _open_device(device_factory)
    yield d, host
    host.close()


def test_a_host_lock_blocks_the_guest_and_getlock_names_the_host(dev):
    d, host = dev
    assert host.lock(fcntl.F_WRLCK, 0, 10)
    assert _lock(d, 6, 7, WR, 5, 10) == C.LOCK_BLOCKED
    r = ok(d, M.Tgetlock(8, 7, RD, 0, 0, 1, "g"), M.Rgetlock)
    assert (r.type, r.start, r.length, r.client_id) == (WR, 0, 10, "host")
    assert _lock(d, 10, 7, WR, 10, 10) == C.LOCK_SUCCESS   # beside the host's range
    assert host.lock(fcntl.F_UNLCK, 0, 10)
    assert _lock(d, 12, 7, WR, 0, 10) == C.LOCK_SUCCESS


def test_a_guest_lock_is_held_on_the_host_until_released(dev):
    d, host = dev
    assert _lock(d, 6, 7, WR, 0, 100) == C.LOCK_SUCCESS
    assert host.holder(fcntl.F_RDLCK, 50, 1) == fcntl.F_WRLCK and not host.lock(fcntl.F_RDLCK, 50, 1)
    assert _lock(d, 8, 7, RD, 0, 100) == C.LOCK_SUCCESS     # a downgrade is seen too
    assert host.lock(fcntl.F_RDLCK, 50, 1) and not host.lock(fcntl.F_WRLCK, 60, 1)
    assert _lock(d, 10, 7, UN, 0, 0) == C.LOCK_SUCCESS
    assert host.lock(fcntl.F_WRLCK, 60, 1)


def test_the_host_range_is_what_all_owners_hold(dev):
    d, host = dev
    assert _lock(d, 6, 7, RD, 0, 10, proc=1) == C.LOCK_SUCCESS
    assert _lock(d, 8, 7, RD, 5, 10, proc=2) == C.LOCK_SUCCESS
    assert _lock(d, 10, 7, UN, 0, 0, proc=1) == C.LOCK_SUCCESS     # owner 2 still reads 5..15
    assert host.lock(fcntl.F_WRLCK, 0, 5) and not host.lock(fcntl.F_WRLCK, 5, 1)
    ok(d, M.Tclunk(12, 7), M.Rclunk)                               # the clunk drops owner 2's lock
    assert host.lock(fcntl.F_WRLCK, 0, 20)


def test_a_blocked_guest_lock_is_granted_when_the_host_lets_go(dev):
    d, host = dev
    assert host.lock(fcntl.F_WRLCK, 0, 0)
    d.guest.send(M.encode(M.Tlock(11, 7, WR, C.LOCK_FLAGS_BLOCK, 0, 10, 1, "g")))
    wait_for(lambda: d.ds.journal(1).tag_pending(11), what="Tlock taken on ring 1")
    d.guest.send(M.encode(M.Tlock(13, 7, WR, C.LOCK_FLAGS_BLOCK, 20, 10, 2, "g")))
    wait_for(lambda: d.ds.journal(1).tag_pending(13), what="second Tlock taken on ring 1")
    assert isinstance(d.guest.rpc(M.Tflush(14, 13)), M.Rflush)      # flushed while the host holds it
    assert host.lock(fcntl.F_UNLCK, 0, 0)
    r = M.decode(d.guest.take(11))
    assert isinstance(r, M.Rlock) and r.status == C.LOCK_SUCCESS
    assert not host.lock(fcntl.F_RDLCK, 0, 10) and host.lock(fcntl.F_WRLCK, 20, 10)  # the flushed one holds nothing


def test_a_dead_worker_releases_nothing_the_guest_holds(dev):
    d, host = dev
    assert _lock(d, 6, 7, WR, 0, 10) == C.LOCK_SUCCESS    # ring 0 took it
    assert d.kill(0) == -9
    assert not host.lock(fcntl.F_WRLCK, 0, 1)
    d.start(0)
    assert _lock(d, 8, 7, UN, 0, 10) == C.LOCK_SUCCESS    # ring 0's replacement lets it go
    assert host.lock(fcntl.F_WRLCK, 0, 1)


def test_tversion_drops_the_host_locks(dev):
    d, host = dev
    assert _lock(d, 6, 7, WR, 0, 10) == C.LOCK_SUCCESS
    version(d, 8192)
    assert host.lock(fcntl.F_WRLCK, 0, 10)


def test_another_device_on_the_same_export_conflicts(device_factory):
    a, host = _open_device(device_factory)
    host.close()
    b, host = _open_device(device_factory, export=a.export)
    host.close()
    assert _lock(a, 6, 7, WR, 0, 10, client="guest-a") == C.LOCK_SUCCESS
    assert _lock(b, 6, 7, RD, 5, 1, client="guest-b") == C.LOCK_BLOCKED
    r = ok(b, M.Tgetlock(8, 7, RD, 5, 1, 1, "guest-b"), M.Rgetlock)
    assert (r.type, r.start, r.length, r.client_id) == (WR, 0, 10, "host")
    assert _lock(a, 10, 7, UN, 0, 10, client="guest-a") == C.LOCK_SUCCESS
    assert _lock(b, 10, 7, RD, 5, 1, client="guest-b") == C.LOCK_SUCCESS


def test_the_guests_locks_outlive_an_adoption_that_renames_the_segment(dev):
    """A restarted xen9pd adopts the device and renames its segment; workers started after that know
    only the new name, and must still reach the keeper that holds the guest's locks."""
    d, host = dev
    assert _lock(d, 6, 7, WR, 0, 10) == C.LOCK_SUCCESS    # ring 0 took it: the keeper holds it
    for ring in (0, 1):
        assert d.kill(ring) == -9
    new = d.name + "-adopted"
    os.rename(os.path.join(SHM_DIR, d.name), os.path.join(SHM_DIR, new))
    d.name = d.ds.name = new
    assert not host.lock(fcntl.F_WRLCK, 0, 1)
    d.start(0)
    d.start(1)
    assert _lock(d, 8, 7, UN, 0, 10) == C.LOCK_SUCCESS    # through the same keeper: the host sees it go
    assert host.lock(fcntl.F_WRLCK, 0, 1)
