"""ShmFidTable: the FidTable contract over shared memory, bounds, rename, and recovery from a dead writer."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from xen9p_common.p9 import Qid
from xen9p_worker.shared.device_state import SHM_DIR, DeviceState
from xen9p_worker.fids import FID_FILE, FID_PATH, FID_XATTR_WRITE, FidEntry
from xen9p_worker.shared import layout as L
from tests.shm_states import attached_pair

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def entry(path=b"a", kind=FID_PATH, **kw):
    return FidEntry(kind, path, Qid(0, 1, 42), 1000, **kw)


@pytest.fixture
def pair():
    with attached_pair(max_fids=8, xattr_slots=2) as (ds, other):
        yield ds, other
    assert not os.path.exists(os.path.join(SHM_DIR, ds.name))


def test_add_get_update_remove_seen_by_another_attachment(pair):
    a, b = pair
    e = a.fids.add(5, entry(b"x/y"))
    assert e.generation > 0
    got = b.fids.get(5)
    assert (got.path, got.generation, got.uid) == (b"x/y", e.generation, 1000)
    a.fids.update(5, e.copy(kind=FID_FILE, open_flags=os.O_RDWR, holder_pid=123, holder_fd=9))
    got = b.fids.get(5)  # the reader's cache must notice the change
    assert (got.kind, got.holder_pid, got.holder_fd, got.generation) == (FID_FILE, 123, 9, e.generation)
    assert b.fids.count_open() == 1
    removed = b.fids.remove(5)
    assert removed.kind == FID_FILE
    with pytest.raises(OSError) as ei:
        a.fids.get(5)
    assert ei.value.errno == errno.ENOENT
    assert a.fids.count() == 0 and a.fids.count_open() == 0


def test_bounds_eexist_emfile_and_slot_reuse(pair):
    a, b = pair
    for fid in range(8):
        a.fids.add(fid * 1000 + 7, entry())
    with pytest.raises(OSError) as ei:
        b.fids.add(99, entry())
    assert ei.value.errno == errno.EMFILE
    with pytest.raises(OSError) as ei:
        b.fids.add(7, entry())
    assert ei.value.errno == errno.EEXIST
    gen_old = a.fids.get(3007).generation
    a.fids.remove(3007)
    e = b.fids.add(3007, entry(b"new"))
    assert e.generation != gen_old and a.fids.get(3007).path == b"new"
    assert sorted(a.fids.snapshot()) == sorted(f * 1000 + 7 for f in range(8))


def test_many_colliding_fids_survive_deletes(pair):
    a, _ = pair
    # Deleting from the middle of probe chains must keep every other fid findable.
    fids = [0, 16, 32, 48, 1, 17, 33, 49]
    for f in fids:
        a.fids.add(f, entry(str(f).encode()))
    for f in (16, 1, 48):
        a.fids.remove(f)
    for f in (0, 32, 17, 33, 49):
        assert a.fids.get(f).path == str(f).encode()


def test_rename_subtree_and_clear(pair):
    a, b = pair
    a.fids.add(1, entry(b"d"))
    a.fids.add(2, entry(b"d/f"))
    a.fids.add(3, entry(b"dx/f"))
    a.fids.add(4, entry(b""))
    assert b.fids.get(2).path == b"d/f"  # warm b's cache
    assert a.fids.rename_subtree(b"d", b"e/g") == 2
    assert [b.fids.get(i).path for i in (1, 2, 3, 4)] == [b"e/g", b"e/g/f", b"dx/f", b""]
    removed = b.fids.clear()
    assert sorted(f for f, _ in removed) == [1, 2, 3, 4]
    assert a.fids.count() == 0
    with pytest.raises(OSError):
        a.fids.get(1)


def test_xattr_values_and_blob_exhaustion(pair):
    a, b = pair
    big = os.urandom(L.XATTR_MAX)
    a.fids.add(1, entry(kind=FID_XATTR_WRITE, xattr_name=b"user.x", xattr_value=big))
    a.fids.add(2, entry(kind=FID_XATTR_WRITE, xattr_value=b"v"))
    assert b.fids.get(1).xattr_value == big
    with pytest.raises(OSError) as ei:
        a.fids.add(3, entry(kind=FID_XATTR_WRITE, xattr_value=b"w"))
    assert ei.value.errno == errno.ENOSPC
    assert a.fids.count() == 2
    a.fids.remove(1)
    a.fids.add(3, entry(kind=FID_XATTR_WRITE, xattr_value=b"w"))
    assert b.fids.get(3).xattr_value == b"w"
    with pytest.raises(OSError) as ei:
        a.fids.add(4, entry(xattr_value=b"x" * (L.XATTR_MAX + 1)))
    assert ei.value.errno == errno.E2BIG


def test_long_path_refused(pair):
    a, _ = pair
    with pytest.raises(OSError) as ei:
        a.fids.add(1, entry(b"p" * 5000))
    assert ei.value.errno == errno.ENAMETOOLONG


def test_writer_killed_mid_update_does_not_wedge(pair):
    a, b = pair
    a.fids.add(1, entry(b"keep"))
    # A process takes the mutex, leaves the seqlock word odd (mid-update) and is SIGKILLed.
    code = (
        "import os, sys, signal\n"
        "from xen9p_worker.shared.device_state import DeviceState\n"
        f"ds = DeviceState.attach({a.name!r})\n"
        "ds.mutex.__enter__()\n"
        "ds.mutex.write_begin()\n"
        "sys.stdout.write('held\\n'); sys.stdout.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=REPO),
                       capture_output=True, text=True, timeout=30)
    assert p.stdout.strip() == "held" and p.returncode == -9
    assert a.mutex.read_seq() & 1  # left odd by the dead writer
    # Readers and writers both get through; the index is rebuilt from the slots.
    assert b.fids.get(1).path == b"keep"
    b.fids.add(2, entry(b"after"))
    assert a.fids.get(2).path == b"after"
    assert not a.mutex.read_seq() & 1


def test_open_files_at_and_the_reclaimed_mark_are_device_wide():
    with attached_pair(max_fids=8) as (ds, other):
        q = Qid(0, 0, 1)
        ds.fids.add(1, FidEntry(FID_PATH, b"d/f", q, 0))
        ds.fids.add(2, FidEntry(FID_FILE, b"d/f", q, 0, holder_pid=7, holder_fd=9))
        ds.fids.add(3, FidEntry(FID_FILE, b"d/g", q, 0))
        got = other.fids.open_files_at(b"d/f")
        assert [(f, e.holder_pid, e.holder_fd) for f, e in got] == [(2, 7, 9)]
        assert not other.fids.reclaimed()
        ds.fids.mark_reclaimed()
        assert other.fids.reclaimed()
