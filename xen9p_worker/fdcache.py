"""Per-process cache of OS file descriptors, keyed by (fid, generation, role).

Fid entries are plain data; this cache turns them into fds lazily and keeps them
reference-counted, so a Tclunk never closes an fd another thread is reading.

Host pressure: every cache of a process counts its fds against one FdBudget (RLIMIT_NOFILE
less a reserve for everything else the process holds). Past it - or when an open fails with
EMFILE - the least recently used fds no request is using are closed: idle O_PATH fds, and the
fds of open regular files that still have a name (they are reopened by path when next used).
An unlinked file's fd is never closed, nor one pinned because its name is about to go.
"""
from __future__ import annotations

import errno
import os
import resource
import stat
import threading
import weakref
from collections import OrderedDict
from typing import Callable, Hashable

ROLE_PATH = 0  # O_PATH fd of the fid's object (walk, getattr of unopened fids)
ROLE_OPEN = 1  # the fd opened by Tlopen/Tlcreate (kept until Tclunk: open-then-unlink)


class FdSlot:
    __slots__ = ("fd", "refs", "dropped", "evictable", "pinned", "__weakref__")

    def __init__(self, fd: int, evictable: bool) -> None:
        self.fd = fd
        self.refs = 0
        self.dropped = False
        self.evictable = evictable  # an idle O_PATH fd: evicted beyond max_idle too
        self.pinned = False


class FdBudget:
    """How many fds the caches of one process may hold together before the oldest are reclaimed."""

    def __init__(self, limit: int | None = None) -> None:
        if limit is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if soft == resource.RLIM_INFINITY:
                soft = 1 << 20
            limit = soft - max(64, soft // 8)  # sockets, pipes, mappings, walks in progress
        self.limit = max(16, limit)
        self.held = 0
        self.reclaimed_total = 0
        self._lock = threading.Lock()
        self._caches: weakref.WeakSet = weakref.WeakSet()

    def add(self, n: int) -> bool:
        """Count n more fds; True when the caches are now over the limit."""
        with self._lock:
            self.held += n
            return self.held > self.limit

    def reclaim(self, n: int | None = None) -> int:
        """Close up to n least recently used fds of the caches (default: down to three quarters of the limit)."""
        if n is None:
            n = self.held - (self.limit - self.limit // 4)
        closed = 0
        for cache in list(self._caches):
            if closed >= n:
                break
            closed += cache.reclaim(n - closed)
        return closed

    def reclaim_for_emfile(self) -> int:
        """The host said EMFILE (other fds of the process grew): close a quarter of what the caches hold."""
        return self.reclaim(max(16, self.held // 4))


class FdCache:
    """fds by key with reference counts; idle O_PATH fds are evicted beyond `max_idle`.

    acquire() returns a slot whose fd stays valid until the matching release(),
    even if drop() runs in between (the close is deferred to the last release).
    `on_reclaim()` runs when an open file's fd was reclaimed (the fid table remembers it).
    """

    def __init__(self, max_idle: int = 1024, budget: FdBudget | None = None,
                 on_reclaim: Callable[[], None] | None = None) -> None:
        self.max_idle = max_idle
        self._d: OrderedDict[Hashable, FdSlot] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self._idle = 0
        self.budget = budget if budget is not None else FdBudget()
        self.budget._caches.add(self)
        self.on_reclaim = on_reclaim

    def acquire(self, key: Hashable, opener: Callable[[], int], evictable: bool = True) -> FdSlot:
        with self._lock:
            slot = self._d.get(key)
            if slot is not None:
                slot.refs += 1
                self._d.move_to_end(key)
                return slot
        try:
            fd = opener()  # may block or raise; done without the lock
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE) or not self.budget.reclaim_for_emfile():
                raise
            fd = opener()
        with self._lock:
            slot = self._d.get(key)
            if slot is not None:  # another thread won the race
                slot.refs += 1
                extra = fd
            else:
                slot = self._insert_locked(key, fd, evictable)
                slot.refs = 1
                extra = -1
        if extra >= 0:
            os.close(extra)
        elif self.budget.add(1):
            self.budget.reclaim()
        return slot

    def peek(self, key: Hashable) -> int:
        """The cached fd for key without taking a reference, or -1."""
        slot = self._d.get(key)
        return slot.fd if slot is not None else -1

    def put(self, key: Hashable, fd: int, evictable: bool = False) -> None:
        """Install an fd the caller already opened (Tlcreate), replacing nothing."""
        with self._lock:
            old = self._d.get(key)
            if old is not None:
                os.close(fd)
                return
            self._insert_locked(key, fd, evictable)
        if self.budget.add(1):
            self.budget.reclaim()

    def pin(self, key: Hashable) -> None:
        """Never reclaim key's fd (its file is about to lose its name)."""
        with self._lock:
            slot = self._d.get(key)
            if slot is not None:
                slot.pinned = True

    def release(self, slot: FdSlot) -> None:
        with self._lock:
            slot.refs -= 1
            if slot.refs or not slot.dropped:
                return
        os.close(slot.fd)

    def drop(self, key: Hashable) -> None:
        """Forget key; its fd is closed now or at the last release."""
        with self._lock:
            slot = self._d.pop(key, None)
            if slot is None:
                return
            if slot.evictable:
                self._idle -= 1
            slot.dropped = True
            self.budget.add(-1)
            if slot.refs:
                return
        os.close(slot.fd)

    def clear(self) -> None:
        for key in list(self._d):
            self.drop(key)

    def keys(self) -> list:
        return list(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def reclaim(self, want: int) -> int:
        """Close up to `want` least recently used fds that nothing uses; how many were closed."""
        victims, opened = [], 0
        with self._lock:
            for key, slot in self._d.items():
                if len(victims) >= want:
                    break
                if slot.refs or slot.pinned:
                    continue
                if not slot.evictable:
                    st = os.fstat(slot.fd)
                    if not stat.S_ISREG(st.st_mode) or st.st_nlink == 0:
                        continue  # an unlinked file lives only through this fd; a directory keeps its offset
                    opened += 1
                victims.append(key)
            for key in victims:
                slot = self._d.pop(key)
                self._idle -= slot.evictable
                slot.dropped = True
                os.close(slot.fd)
        if victims:
            self.budget.add(-len(victims))
            self.budget.reclaimed_total += len(victims)
        if opened and self.on_reclaim is not None:
            self.on_reclaim()
        return len(victims)

    # -- internals (self._lock held) ------------------------------------------------------

    def _insert_locked(self, key: Hashable, fd: int, evictable: bool) -> FdSlot:
        slot = self._d[key] = FdSlot(fd, evictable)
        if evictable:
            self._idle += 1
            if self._idle > self.max_idle:
                self._evict_locked()
        return slot

    def _evict_locked(self) -> None:
        # Least recently used idle path fds go first; open files only under pressure (reclaim).
        victims = []
        for key, slot in self._d.items():
            if slot.evictable and slot.refs == 0:
                victims.append(key)
                if self._idle - len(victims) <= self.max_idle // 2:
                    break
        for key in victims:
            slot = self._d.pop(key)
            self._idle -= 1
            os.close(slot.fd)
        self.budget.add(-len(victims))
