"""POSIX byte-range lock table: conflicts between owners, split/merge, EOF ranges, waiters, clunk release."""
import threading

from xen9p_common.p9.constants import LOCK_TYPE_RDLCK as RD, LOCK_TYPE_UNLCK as UN, LOCK_TYPE_WRLCK as WR
from xen9p_worker.locks import INF, LocalLockTable

A = ("hostA", 1)
B = ("hostB", 2)
K = (1, 100)


def ranges(t, key=K):
    return [(lk.start, lk.end, lk.type, lk.owner) for lk in t.locks(key)]


def test_write_conflicts_between_owners_not_within():
    t = LocalLockTable()
    assert t.lock(K, A, WR, 0, 10, fid=1)
    assert not t.lock(K, B, WR, 5, 10, fid=2)
    assert not t.lock(K, B, RD, 9, 1, fid=2)
    assert t.lock(K, B, WR, 10, 10, fid=2)  # adjacent, no overlap
    assert t.lock(K, A, WR, 0, 5, fid=1)  # own locks never conflict


def test_readers_share_writer_excluded():
    t = LocalLockTable()
    assert t.lock(K, A, RD, 0, 0, fid=1)
    assert t.lock(K, B, RD, 100, 0, fid=2)
    assert not t.lock(K, B, WR, 100, 1, fid=2)
    assert t.test(K, B, WR, 100, 1).owner == A


def test_length_zero_runs_to_eof():
    t = LocalLockTable()
    t.lock(K, A, WR, 1000, 0, fid=1)
    assert ranges(t) == [(1000, INF, WR, A)]
    assert not t.lock(K, B, RD, 1 << 40, 1, fid=2)
    assert t.lock(K, B, RD, 0, 1000, fid=2)


def test_unlock_splits_a_range():
    t = LocalLockTable()
    t.lock(K, A, WR, 0, 100, fid=1)
    t.lock(K, A, UN, 40, 20, fid=1)
    assert ranges(t) == [(0, 40, WR, A), (60, 100, WR, A)]
    assert t.lock(K, B, WR, 40, 20, fid=2)


def test_same_type_ranges_merge_and_type_change_splits():
    t = LocalLockTable()
    t.lock(K, A, RD, 0, 10, fid=1)
    t.lock(K, A, RD, 10, 10, fid=1)
    assert ranges(t) == [(0, 20, RD, A)]
    t.lock(K, A, WR, 5, 5, fid=1)
    assert ranges(t) == [(0, 5, RD, A), (5, 10, WR, A), (10, 20, RD, A)]


def test_getlock_reports_conflict_or_none():
    t = LocalLockTable()
    assert t.test(K, B, WR, 0, 0) is None
    t.lock(K, A, RD, 10, 5, fid=1)
    lk = t.test(K, B, WR, 0, 0)
    assert (lk.start, lk.end, lk.type, lk.owner) == (10, 15, RD, A)
    assert t.test(K, B, RD, 0, 0) is None
    assert t.test(K, A, WR, 0, 0) is None


def test_release_fid_drops_the_owners_locks_on_that_file_only():
    t = LocalLockTable()
    t.lock(K, A, WR, 0, 10, fid=1)
    t.lock(K, A, WR, 20, 10, fid=3)  # same owner, another fid: close() semantics drop both
    t.lock(K, B, RD, 50, 10, fid=2)
    t.lock((1, 200), A, WR, 0, 10, fid=4)
    t.release_fid(K, 1)
    assert ranges(t) == [(50, 60, RD, B)]
    assert ranges(t, (1, 200)) == [(0, 10, WR, A)]


def test_waiter_granted_on_unlock():
    t = LocalLockTable()
    t.lock(K, A, WR, 0, 0, fid=1)
    got = threading.Event()
    w = t.lock_or_wait(K, B, WR, 0, 10, 2, lambda ok: got.set())
    assert w is not None and not got.is_set()
    t.lock(K, A, UN, 0, 0, fid=1)
    assert got.is_set()
    assert ranges(t) == [(0, 10, WR, B)]
    assert not t.cancel(w)


def test_waiter_granted_on_release_fid_and_cancel_withdraws():
    t = LocalLockTable()
    t.lock(K, A, WR, 0, 0, fid=1)
    hits = []
    w1 = t.lock_or_wait(K, B, WR, 0, 10, 2, lambda ok: hits.append("b"))
    w2 = t.lock_or_wait(K, ("hostC", 3), WR, 100, 10, 3, lambda ok: hits.append("c"))
    assert t.cancel(w1)
    t.release_fid(K, 1)
    assert hits == ["c"]
    assert w2.done


def test_lock_or_wait_grants_at_once_without_conflict():
    t = LocalLockTable()
    assert t.lock_or_wait(K, A, WR, 0, 0, 1, lambda ok: None) is None
    assert ranges(t) == [(0, INF, WR, A)]


def test_coverage_is_the_strongest_lock_at_each_byte():
    from xen9p_worker.locks import Lock, coverage
    rd, wr, un = RD, WR, UN
    locks = [Lock(0, 10, rd, ("a", 1)), Lock(5, 15, rd, ("b", 1)), Lock(20, 30, wr, ("c", 1))]
    assert coverage(locks, 0, 40) == [(0, 15, rd), (15, 20, un), (20, 30, wr), (30, 40, un)]
    assert coverage(locks, 12, 25) == [(12, 15, rd), (15, 20, un), (20, 25, wr)]
    assert coverage([], 3, 4) == [(3, 4, un)]
