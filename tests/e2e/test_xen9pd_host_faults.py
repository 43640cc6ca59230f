"""Host faults under real workers: full export filesystem, export removed, RLIMIT_NOFILE, xenstored stopped.

Each fault hits one device; the guest sees a clear errno, the daemon keeps serving, another device
never notices. (/dev/shm full at device creation: test_xen9pd_shm_full.py.)
"""
from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess

import pytest

from tests.e2e.real_guest import RealGuest, World, p9_errno, ring
from xen9p_common.p9 import constants as c
from xen9p_common.xenbus import XenbusState


@pytest.fixture(scope="module")
def world():
    w = World("hf")
    yield w
    w.close()


@pytest.fixture(scope="module")
def bystander(world):
    g = RealGuest(world, 40).mount()
    yield g
    g.close()


def _sibling_untouched(world, before: set[str]) -> None:
    assert set(os.listdir(world.dir)) <= before | {"xen9pd.log"}, "something was created beside the exports"


def test_full_export_filesystem_gives_enospc_and_keeps_serving(world, bystander):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    g = RealGuest(world, 41)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", g.export], capture_output=True, text=True)
    if r.returncode != 0:
        g.close()
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        g.mount()
        chunk = b"x" * 65536
        err = None
        with g.root.create("fill", c.L_O_RDWR | c.L_O_CREAT, 0o644) as f:
            for i in range(64):  # 4 MiB into a 1 MiB filesystem
                err = p9_errno(lambda i=i: f.write(chunk, i * len(chunk)))
                if err is not None:
                    break
        assert err == errno.ENOSPC, f"expected ENOSPC, got {err and errno.errorcode.get(err)}"
        assert g.be_state() == XenbusState.Connected
        g.root.unlink("fill")
        assert g.works("after-enospc")
        assert bystander.works("while-41-full")
        assert all(ring(world.daemon, f"dom41/dev0/ring{i}")["restarts"] == 0 for i in (0, 1))
    finally:
        g.close()
        subprocess.run(["umount", "-l", g.export], capture_output=True)


def test_export_removed_while_serving_gives_errors_not_an_escape(world, bystander):
    g = RealGuest(world, 42).mount()
    try:
        before = set(os.listdir(world.dir))
        g.root.mkdir("sub", 0o755)
        shutil.rmtree(g.export)
        # The workers hold the removed directory: creating in it fails with ENOENT, nothing escapes.
        assert p9_errno(lambda: g.root.create("x", c.L_O_RDWR | c.L_O_CREAT, 0o644).clunk()) == errno.ENOENT
        assert p9_errno(lambda: g.root.walk(["sub"]).clunk()) == errno.ENOENT
        assert p9_errno(lambda: g.root.walk([".."]).clunk()) is None  # '..' at the root stays there
        g.root.getattr()
        _sibling_untouched(world, before - {"export42"})
        # A directory made anew at the export's path is not what the workers serve.
        os.mkdir(g.export)
        with open(os.path.join(g.export, "newfile"), "w") as f:
            f.write("new")
        assert p9_errno(lambda: g.root.walk(["newfile"]).clunk()) == errno.ENOENT
        assert g.be_state() == XenbusState.Connected
        assert bystander.works("while-42-removed")
        assert world.daemon.proc.poll() is None
    finally:
        g.close()


def test_worker_at_rlimit_nofile_answers_emfile_and_recovers(world, bystander):
    g = RealGuest(world, 43).mount()
    opened = []
    try:
        for i in (0, 1):
            pid = ring(world.daemon, f"dom43/dev0/ring{i}")["pid"]
            soft, _ = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            used = len(os.listdir(f"/proc/{pid}/fd"))
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (used + 24, used + 24))
        err = None
        for i in range(200):
            name = f"f{i}"
            try:
                opened.append(g.root.create(name, c.L_O_RDWR | c.L_O_CREAT, 0o644))
            except Exception as e:  # noqa: BLE001 - the errno is the point
                err = getattr(e, "errno", None)
                break
        assert err in (errno.EMFILE, errno.ENFILE), f"expected EMFILE, got {err!r} after {len(opened)} opens"
        pids = [ring(world.daemon, f"dom43/dev0/ring{i}")["pid"] for i in (0, 1)]
        for f in opened:
            f.clunk()
        opened.clear()
        assert g.works("after-emfile")
        assert [ring(world.daemon, f"dom43/dev0/ring{i}")["pid"] for i in (0, 1)] == pids, "a worker died"
        assert bystander.works("while-43-at-limit")
    finally:
        for f in opened:
            f.clunk()
        g.close()


def test_stopped_xenstored_does_not_stop_the_data_path(world, bystander):
    pid = world.xsd.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        assert bystander.works("xenstored-stopped")  # rings and workers need no xenstore
    finally:
        os.kill(pid, signal.SIGCONT)
    g = RealGuest(world, 44).mount()  # and the control path carries on once it answers again
    try:
        assert g.works("after-xenstored-resumed")
        assert world.daemon.proc.poll() is None
    finally:
        g.close()
