"""The in-process fid table and the fd cache: refusals, generations, subtree renames, deferred close."""
import errno
import os

import pytest

from xen9p_common.p9 import Qid
from xen9p_worker.fdcache import FdCache
from xen9p_worker.fids import FID_FILE, FID_PATH, FidEntry, LocalFidTable

Q = Qid(0, 0, 1)


def entry(path=b"", kind=FID_PATH):
    return FidEntry(kind, path, Q, 0)


def test_add_get_remove():
    t = LocalFidTable()
    t.add(1, entry(b"a"))
    assert t.get(1).path == b"a"
    assert t.count() == 1
    assert t.remove(1).path == b"a"
    with pytest.raises(OSError) as ei:
        t.get(1)
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(OSError):
        t.remove(1)


def test_add_refuses_fid_in_use():
    t = LocalFidTable()
    t.add(1, entry())
    with pytest.raises(OSError) as ei:
        t.add(1, entry())
    assert ei.value.errno == errno.EEXIST


def test_max_fids_refused_with_emfile():
    t = LocalFidTable(max_fids=2)
    t.add(1, entry())
    t.add(2, entry())
    with pytest.raises(OSError) as ei:
        t.add(3, entry())
    assert ei.value.errno == errno.EMFILE
    t.remove(1)
    t.add(3, entry())


def test_generation_is_new_per_add_and_kept_by_update():
    t = LocalFidTable()
    g1 = t.add(1, entry()).generation
    t.update(1, entry(b"x", FID_FILE))
    assert t.get(1).generation == g1
    t.remove(1)
    assert t.add(1, entry()).generation != g1


def test_count_open_follows_kinds():
    t = LocalFidTable()
    t.add(1, entry())
    assert t.count_open() == 0
    t.update(1, entry(kind=FID_FILE))
    assert t.count_open() == 1
    t.add(2, entry(kind=FID_FILE))
    assert t.count_open() == 2
    t.remove(1)
    assert t.count_open() == 1
    t.clear()
    assert t.count_open() == 0 and t.count() == 0


def test_rename_subtree_only_touches_the_subtree():
    t = LocalFidTable()
    for fid, p in enumerate([b"a", b"a/b", b"a/b/c", b"ab", b"x/a"]):
        t.add(fid, entry(p))
    assert t.rename_subtree(b"a", b"z/y") == 3
    assert [t.get(i).path for i in range(5)] == [b"z/y", b"z/y/b", b"z/y/b/c", b"ab", b"x/a"]


def test_clear_returns_what_was_removed():
    t = LocalFidTable()
    t.add(5, entry(b"q"))
    items = t.clear()
    assert [(f, e.path) for f, e in items] == [(5, b"q")]
    assert t.count() == 0


def test_fdcache_defers_close_until_last_release():
    c = FdCache()
    r, w = os.pipe()
    os.close(w)
    slot = c.acquire(("k",), lambda: r)
    c.drop(("k",))
    os.fstat(r)  # still open: a reader holds it
    c.release(slot)
    with pytest.raises(OSError):
        os.fstat(r)


def test_fdcache_reuses_and_evicts_idle_path_fds():
    c = FdCache(max_idle=4)
    opened = []

    def opener():
        fd = os.open("/", os.O_PATH)
        opened.append(fd)
        return fd

    s = c.acquire(1, opener)
    c.release(s)
    s2 = c.acquire(1, opener)
    assert s2 is s and len(opened) == 1
    c.release(s2)
    for k in range(2, 10):
        c.release(c.acquire(k, opener))
    assert len(c) <= 5
    c.clear()
    assert len(c) == 0


def test_fdcache_never_evicts_open_files():
    c = FdCache(max_idle=1)
    fds = [os.open("/", os.O_PATH) for _ in range(3)]
    for i, fd in enumerate(fds):
        c.put(("open", i), fd, evictable=False)
    for k in range(5):
        c.release(c.acquire(k, lambda: os.open("/", os.O_PATH)))
    assert all(c.peek(("open", i)) == fds[i] for i in range(3))
    c.clear()


def test_fdcache_reclaims_least_recently_used_linked_files_only(tmp_path):
    from xen9p_worker.fdcache import FdBudget
    reclaims = []
    c = FdCache(budget=FdBudget(limit=16), on_reclaim=lambda: reclaims.append(1))
    files = [tmp_path / f"f{i}" for i in range(12)]
    for f in files:
        f.write_text("x")
    special = {"gone": os.open(files[0], os.O_RDONLY), "pinned": os.open(files[1], os.O_RDONLY),
               "dir": os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)}
    for k, fd in special.items():
        c.put(k, fd)
    os.unlink(files[0])
    c.pin("pinned")
    for i in range(2, 12):
        c.put(("open", i), os.open(files[i], os.O_RDONLY))
    busy = c.acquire(("open", 2), lambda: -1)  # in use by a request: kept
    for i in range(20):
        c.release(c.acquire(("path", i), lambda: os.open("/", os.O_PATH)))
    assert c.budget.held <= 16 and reclaims
    assert all(c.peek(k) == fd for k, fd in special.items())
    assert c.peek(("open", 2)) == busy.fd and c.peek(("open", 3)) == -1  # the oldest idle one went
    c.release(busy)
    c.clear()
    assert c.budget.held == 0


def test_fdcache_reclaims_and_retries_when_an_open_hits_emfile(tmp_path):
    from xen9p_worker.fdcache import FdBudget
    c = FdCache(budget=FdBudget(limit=1000))
    (tmp_path / "f").write_text("x")
    c.put("old", os.open(tmp_path / "f", os.O_RDONLY))  # an open file's fd, least recently used
    calls = []

    def opener():
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EMFILE, "full")
        return os.open(tmp_path, os.O_PATH)

    slot = c.acquire("new", opener)
    assert len(calls) == 2 and c.peek("old") == -1
    c.release(slot)
    c.clear()


def test_open_files_at_and_the_reclaimed_mark():
    t = LocalFidTable()
    t.add(1, entry(b"a/f"))
    t.add(2, entry(b"a/f"))
    t.update(2, t.get(2).copy(kind=FID_FILE))
    assert [f for f, _ in t.open_files_at(b"a/f")] == [2] and not t.reclaimed()
    t.mark_reclaimed()
    assert t.reclaimed()
