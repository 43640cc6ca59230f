"""POSIX byte-range locks for Tlock/Tgetlock, shared by every session of an export.

Owners are (client_id, proc_id); an owner's own locks never conflict; length 0
means "to EOF"; a clunk releases the owner's locks on that file, like close().
"""
from __future__ import annotations

import abc
import threading
from dataclasses import dataclass
from typing import Callable, Hashable

from xen9p_common.p9.constants import LOCK_TYPE_RDLCK, LOCK_TYPE_UNLCK, LOCK_TYPE_WRLCK

INF = 1 << 64  # exclusive end of a lock that runs to EOF
Owner = tuple  # (client_id: str, proc_id: int)
Opener = Callable[[], int] | None


@dataclass(slots=True)
class Lock:
    start: int
    end: int  # exclusive
    type: int
    owner: Owner


def lock_range(start: int, length: int) -> tuple[int, int]:
    """[start, end) of a 9P lock request; length 0 runs to EOF."""
    end = INF if length == 0 else min(INF, start + length)
    return start, end


class Waiter:
    """A blocked Tlock; `callback(True)` runs (on the releasing thread) once granted."""

    __slots__ = ("key", "owner", "type", "start", "end", "fid", "callback", "done")

    def __init__(self, key, owner, type_, start, end, fid, callback) -> None:
        self.key, self.owner, self.type, self.start, self.end = key, owner, type_, start, end
        self.fid, self.callback, self.done = fid, callback, False


class LockTable(abc.ABC):
    """Interface of the lock table; a shared-memory version can replace LocalLockTable."""

    @abc.abstractmethod
    def test(self, key: Hashable, owner: Owner, type_: int, start: int, length: int,
             opener: Opener = None) -> Lock | None:
        """The first lock that would conflict with this request, or None.

        `opener` (here and below) opens a new fd on the file, for a table that also holds
        its locks on the host (ShmLockTable with hostlocks); others ignore it."""

    @abc.abstractmethod
    def lock(self, key: Hashable, owner: Owner, type_: int, start: int, length: int, fid: int,
             opener: Opener = None) -> bool:
        """Set/unlock without waiting; False if another owner's lock conflicts."""

    @abc.abstractmethod
    def lock_or_wait(self, key, owner, type_, start, length, fid,
                     callback: Callable[[bool], None], opener: Opener = None) -> Waiter | None:
        """Set the lock now (returns None) or queue a Waiter granted later via callback."""

    @abc.abstractmethod
    def cancel(self, waiter: Waiter) -> bool:
        """Withdraw a queued waiter; False if it was already granted."""

    @abc.abstractmethod
    def release_fid(self, key: Hashable, fid: int) -> None:
        """Tclunk of fid: drop every lock on key of each owner that locked through fid."""

    @abc.abstractmethod
    def locks(self, key: Hashable) -> list[Lock]:
        """Snapshot of the locks on key (tests, metrics)."""


def _conflicts(a: Lock, type_: int, start: int, end: int, owner: Owner) -> bool:
    return (a.owner != owner and a.start < end and start < a.end
            and (a.type == LOCK_TYPE_WRLCK or type_ == LOCK_TYPE_WRLCK))


def apply_lock(locks: list, owner, type_: int, s: int, e: int) -> list | None:
    """POSIX fcntl semantics on one file's lock list: the list after owner sets type_ on [s, e).

    None if another owner's lock conflicts. The owner's own overlapping locks are trimmed to
    the parts outside [s, e) (so a lock replaces or unlocks part of them); a new read or
    write lock merges with the owner's adjacent or overlapping locks of the same type.
    Pure: shared by the in-process and the shared-memory lock tables.
    """
    if type_ != LOCK_TYPE_UNLCK and any(_conflicts(lk, type_, s, e, owner) for lk in locks):
        return None
    out = []
    for lk in locks:
        if lk.owner != owner or lk.end <= s or e <= lk.start:
            out.append(lk)
            continue
        if lk.start < s:
            out.append(Lock(lk.start, s, lk.type, owner))
        if e < lk.end:
            out.append(Lock(e, lk.end, lk.type, owner))
    if type_ in (LOCK_TYPE_RDLCK, LOCK_TYPE_WRLCK):
        new = Lock(s, e, type_, owner)
        merged = []
        for lk in out:
            if lk.owner == owner and lk.type == type_ and lk.start <= new.end and new.start <= lk.end:
                new = Lock(min(lk.start, new.start), max(lk.end, new.end), type_, owner)
            else:
                merged.append(lk)
        merged.append(new)
        out = merged
    out.sort(key=lambda lk: lk.start)
    return out


def coverage(locks: list, s: int, e: int) -> list[tuple[int, int, int]]:
    """[s, e) cut where `locks` change: (start, end, strongest type held there, LOCK_TYPE_UNLCK if none)."""
    cuts = sorted({s, e} | {x for lk in locks for x in (lk.start, lk.end) if s < x < e})
    out: list[tuple[int, int, int]] = []
    for a, b in zip(cuts, cuts[1:]):
        held = [lk.type for lk in locks if lk.start < b and a < lk.end]
        t = (LOCK_TYPE_WRLCK if LOCK_TYPE_WRLCK in held else LOCK_TYPE_RDLCK if held else LOCK_TYPE_UNLCK)
        if out and out[-1][2] == t and out[-1][1] == a:
            out[-1] = (out[-1][0], b, t)
        else:
            out.append((a, b, t))
    return out


class LocalLockTable(LockTable):
    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._locks: dict[Hashable, list[Lock]] = {}
        self._fids: dict[tuple, set[int]] = {}  # (key, owner) -> fids that locked
        self._waiters: dict[Hashable, list[Waiter]] = {}

    def test(self, key, owner, type_, start, length, opener=None):
        s, e = lock_range(start, length)
        with self._mu:
            for lk in self._locks.get(key, ()):
                if _conflicts(lk, type_, s, e, owner):
                    return Lock(lk.start, lk.end, lk.type, lk.owner)
        return None

    def lock(self, key, owner, type_, start, length, fid, opener=None):
        s, e = lock_range(start, length)
        with self._mu:
            ok = self._try_locked(key, owner, type_, s, e, fid)
            granted = self._wake_locked(key) if ok else []
        _notify(granted)
        return ok

    def lock_or_wait(self, key, owner, type_, start, length, fid, callback, opener=None):
        s, e = lock_range(start, length)
        with self._mu:
            if self._try_locked(key, owner, type_, s, e, fid):
                granted = self._wake_locked(key)
                w = None
            else:
                w = Waiter(key, owner, type_, s, e, fid, callback)
                self._waiters.setdefault(key, []).append(w)
                granted = []
        _notify(granted)
        return w

    def cancel(self, waiter):
        with self._mu:
            if waiter.done:
                return False
            waiter.done = True
            lst = self._waiters.get(waiter.key, [])
            if waiter in lst:
                lst.remove(waiter)
            if not lst:
                self._waiters.pop(waiter.key, None)
            return True

    def release_fid(self, key, fid):
        with self._mu:
            owners = [o for (k, o), fids in self._fids.items() if k == key and fid in fids]
            if not owners:
                return
            lst = self._locks.get(key, [])
            lst[:] = [lk for lk in lst if lk.owner not in owners]
            if not lst:
                self._locks.pop(key, None)
            for o in owners:
                del self._fids[(key, o)]
            granted = self._wake_locked(key)
        _notify(granted)

    def locks(self, key):
        with self._mu:
            return [Lock(lk.start, lk.end, lk.type, lk.owner) for lk in self._locks.get(key, ())]

    # -- internals (self._mu held) ------------------------------------------

    def _try_locked(self, key, owner, type_, s, e, fid) -> bool:
        out = apply_lock(self._locks.get(key, []), owner, type_, s, e)
        if out is None:
            return False
        if type_ in (LOCK_TYPE_RDLCK, LOCK_TYPE_WRLCK):
            self._fids.setdefault((key, owner), set()).add(fid)
        if out:
            self._locks[key] = out
        else:
            self._locks.pop(key, None)
        return True

    def _wake_locked(self, key) -> list[Waiter]:
        granted = []
        lst = self._waiters.get(key)
        while lst:
            progress = False
            for w in list(lst):
                if self._try_locked(key, w.owner, w.type, w.start, w.end, w.fid):
                    w.done = True
                    lst.remove(w)
                    granted.append(w)
                    progress = True
            if not progress:
                break
        if lst is not None and not lst:
            self._waiters.pop(key, None)
        return granted


def _notify(granted: list[Waiter]) -> None:
    for w in granted:
        w.callback(True)
