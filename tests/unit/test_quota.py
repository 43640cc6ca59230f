"""xen9p_worker.quota on a real directory: max-files, max-space estimates, auto-delete of the oldest closed file."""
from __future__ import annotations

import errno
import os

import pytest

from xen9p_worker.fids import FID_FILE, FidEntry, LocalFidTable
from xen9p_worker.quota import Quota


@pytest.fixture
def root(tmp_path):
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    yield tmp_path, fd
    os.close(fd)


def _file(d, name, size, mtime):
    p = d / name
    p.write_bytes(b"x" * size)
    os.utime(p, (mtime, mtime))


def test_max_files_counts_names_and_refuses(root):
    d, fd = root
    (d / "a").mkdir()
    _file(d / "a", "f", 1, 1)
    q = Quota(fd, LocalFidTable(), max_files=3)
    q.admit_files(1)
    (d / "b").mkdir()  # what the admitted request did
    with pytest.raises(OSError) as ei:
        q.admit_files(1)
    assert ei.value.errno == errno.ENOSPC


def test_space_admissions_add_up_to_the_limit(root):
    d, fd = root
    q = Quota(fd, LocalFidTable(), max_space=4 << 20)
    with open(d / "f", "wb") as f:
        for _ in range(32):  # each admission is followed by the write it admitted
            q.admit_space(128 * 1024)
            f.write(os.urandom(128 * 1024))
            f.flush()
    with pytest.raises(OSError) as ei:
        q.admit_space(4096)
    assert ei.value.errno == errno.ENOSPC


def test_auto_delete_removes_oldest_file_not_open(root):
    d, fd = root
    _file(d, "old", 10, 100)
    _file(d, "older", 10, 50)
    _file(d, "oldest", 10, 10)
    fids = LocalFidTable()
    fids.add(1, FidEntry(kind=FID_FILE, path=b"oldest", qid=None, uid=0))
    q = Quota(fd, fids, max_files=3, auto_delete=True)
    q.admit_files(1)
    assert sorted(os.listdir(d)) == ["old", "oldest"] and q.deleted == 1


def test_unlimited_never_walks(root):
    d, fd = root
    q = Quota(-1, LocalFidTable())
    q.admit_files(10 ** 6)
    q.admit_space(1 << 40)
    assert not q.active
