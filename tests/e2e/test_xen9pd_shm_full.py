"""/dev/shm full when a device is created: that device fails with a clear log line, others serve on.

xen9pd runs in its own mount namespace with a small tmpfs on /dev/shm (root only), which the test
fills from inside that namespace after a first device connected.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.e2e.real_guest import DEADLINE, RealGuest, World
from xen9p_sim.frontend.linux import FrontendError
from xen9p_common.xenbus import XenbusState

SHM_MIB = 512
SHM_SIZE = f"{SHM_MIB}m"
PRIVATE_SHM = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'mount -t tmpfs -o size={SHM_SIZE} tmpfs /dev/shm && exec "$@"', "sh"]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "a private /dev/shm needs root (unshare --mount)"
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        return "unshare/nsenter (util-linux) are not installed"
    r = subprocess.run(["unshare", "--mount", "sh", "-c", f"mount -t tmpfs -o size={SHM_SIZE} tmpfs /dev/shm"],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"cannot mount a tmpfs in a new mount namespace: {r.stderr.strip()}"


@pytest.fixture
def world():
    why = _missing()
    if why:
        pytest.skip(why)
    w = World("shm")
    w.daemon.stop()
    w.daemon = None
    w.start_daemon(wrapper=PRIVATE_SHM)
    yield w
    w.close()


def _in_daemon_ns(world, *cmd: str) -> subprocess.CompletedProcess:
    # --root/--wd: entering a mount namespace resets the root to the namespace's own, which would
    # escape a chroot the suite runs in (and fill the host's RAM-backed /dev/shm instead of ours).
    return subprocess.run(["nsenter", "--target", str(world.daemon.proc.pid), "--mount", "--root", "--wd",
                           *cmd], capture_output=True, text=True, timeout=120)


def _fill(world) -> None:
    size = _in_daemon_ns(world, "df", "-k", "--output=size", "/dev/shm")
    kib = int(size.stdout.split()[-1]) if size.returncode == 0 else -1
    assert 0 < kib <= SHM_MIB * 1024, f"not the daemon's private {SHM_SIZE} /dev/shm: {size.stdout}{size.stderr}"
    # Bounded all the same: never more than the private tmpfs could hold.
    r = _in_daemon_ns(world, "sh", "-c",
                      f"dd if=/dev/zero of=/dev/shm/filler bs=1M count={SHM_MIB + 16} 2>&1; df -k /dev/shm")
    assert "No space left" in r.stdout, r.stdout + r.stderr


def test_full_dev_shm_fails_only_the_new_device_with_a_clear_reason(world):
    """Before the fix xen9pd itself died of SIGBUS writing the new segment's header."""
    first = RealGuest(world, 50).mount()
    second = third = None
    try:
        _fill(world)
        second = RealGuest(world, 51)
        second.fe.timeout = DEADLINE
        with pytest.raises(FrontendError):
            second.mount()
        assert world.daemon.proc.poll() is None, "xen9pd died:\n" + world.daemon.logs()[-3000:]
        second.wait_closed()
        logs = world.daemon.wait_log("dom51/dev0: disconnecting: ")
        line = [x for x in logs.splitlines() if "dom51/dev0: disconnecting: " in x][0]
        assert "cannot create device state" in line and "No space left on device" in line, line
        _in_daemon_ns(world, "rm", "-f", "/dev/shm/filler")
        third = RealGuest(world, 52).mount()
        assert third.works("after-shm-freed")
        assert world.daemon.device("dom52/dev0")["state"] == "connected"
    finally:
        for g in (third, second, first):
            if g is not None:
                g.close()


@pytest.mark.xfail(reason="open: device segments are sparse (about 82 MiB each at the default max_fids); a "
                          "worker touching a new page of its segment while /dev/shm is full gets SIGBUS and "
                          "restarts until FATAL. Reserving whole segments up front costs that memory per device; "
                          "the cheap fix (posix_fallocate the pages a request is about to touch, answering "
                          "ENOSPC) needs the segment fd at every writer of a new page: fid slots past the "
                          "high-water mark, xattr blobs, lock records, qid tables (the journal and buckets "
                          "could be reserved at creation); the shared tables get only a memoryview today")
def test_a_connected_device_keeps_serving_while_dev_shm_is_full(world):
    first = RealGuest(world, 53).mount()
    try:
        _fill(world)
        for i in range(64):  # new fids: new pages of the fid table
            assert first.works(f"while-full-{i}")
    finally:
        first.close()
