"""ShmLockTable: POSIX byte-range lock semantics shared by every attachment of a device state."""
from __future__ import annotations

import threading

import pytest

from xen9p_common.p9.constants import LOCK_TYPE_RDLCK, LOCK_TYPE_UNLCK, LOCK_TYPE_WRLCK
from xen9p_worker.locks import INF
from tests.shm_states import attached_pair

KEY = (64769, 1234)
A, B = ("guest", 1), ("guest", 2)


@pytest.fixture
def pair():
    with attached_pair(lock_slots=8) as (ds, other):
        yield ds.locks, other.locks


def test_conflicts_across_attachments(pair):
    a, b = pair
    assert a.lock(KEY, A, LOCK_TYPE_WRLCK, 0, 100, fid=1)
    assert not b.lock(KEY, B, LOCK_TYPE_RDLCK, 50, 10, fid=2)
    lk = b.test(KEY, B, LOCK_TYPE_RDLCK, 50, 10)
    assert (lk.start, lk.end, lk.type, lk.owner) == (0, 100, LOCK_TYPE_WRLCK, A)
    assert b.lock(KEY, B, LOCK_TYPE_RDLCK, 100, 0, fid=2)  # to EOF, adjacent: no overlap
    assert b.test(KEY, A, LOCK_TYPE_WRLCK, 200, 1).end == INF
    assert a.lock(KEY, A, LOCK_TYPE_WRLCK, 0, 10, fid=1)  # own lock never conflicts


def test_unlock_splits_and_merge(pair):
    a, b = pair
    assert a.lock(KEY, A, LOCK_TYPE_WRLCK, 0, 100, fid=1)
    assert a.lock(KEY, A, LOCK_TYPE_UNLCK, 40, 20, fid=1)
    assert [(lk.start, lk.end) for lk in b.locks(KEY)] == [(0, 40), (60, 100)]
    assert a.lock(KEY, A, LOCK_TYPE_WRLCK, 40, 20, fid=1)
    assert [(lk.start, lk.end) for lk in b.locks(KEY)] == [(0, 100)]


def test_release_fid_drops_owner_locks(pair):
    a, b = pair
    assert a.lock(KEY, A, LOCK_TYPE_WRLCK, 0, 10, fid=1)
    assert a.lock(KEY, B, LOCK_TYPE_RDLCK, 20, 10, fid=2)
    b.release_fid(KEY, 1)
    assert [lk.owner for lk in a.locks(KEY)] == [B]
    a.release_all()
    assert b.locks(KEY) == []


def test_waiter_granted_when_other_process_unlocks(pair):
    a, b = pair
    assert a.lock(KEY, A, LOCK_TYPE_WRLCK, 0, 10, fid=1)
    granted = threading.Event()
    w = b.lock_or_wait(KEY, B, LOCK_TYPE_WRLCK, 5, 1, 2, lambda ok: granted.set())
    assert w is not None and not granted.is_set()
    a.lock(KEY, A, LOCK_TYPE_UNLCK, 0, 10, fid=1)
    assert granted.wait(5)
    assert [lk.owner for lk in a.locks(KEY)] == [B]


def test_cancel_waiter(pair):
    a, b = pair
    assert a.lock(KEY, A, LOCK_TYPE_WRLCK, 0, 10, fid=1)
    w = b.lock_or_wait(KEY, B, LOCK_TYPE_WRLCK, 0, 1, 2, lambda ok: pytest.fail("granted"))
    assert b.cancel(w) and not b.cancel(w)
    a.lock(KEY, A, LOCK_TYPE_UNLCK, 0, 10, fid=1)
    assert b.locks(KEY) == []


def test_table_full_is_enolck(pair):
    a, _ = pair
    for i in range(4):  # a lock + its fid mark per owner: 8 records
        assert a.lock(KEY, ("g", i), LOCK_TYPE_RDLCK, i * 10, 1, fid=i)
    with pytest.raises(OSError) as ei:
        a.lock(KEY, ("g", 9), LOCK_TYPE_RDLCK, 500, 1, fid=9)
    assert ei.value.errno == __import__("errno").ENOLCK
