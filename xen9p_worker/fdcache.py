"""Per-process cache of OS file descriptors, keyed by (fid, generation, role).

Fid entries are plain data; this cache turns them into fds lazily and keeps them
reference-counted, so a Tclunk never closes an fd another thread is reading.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Hashable

ROLE_PATH = 0  # O_PATH fd of the fid's object (walk, getattr of unopened fids)
ROLE_OPEN = 1  # the fd opened by Tlopen/Tlcreate (kept until Tclunk: open-then-unlink)


class FdSlot:
    __slots__ = ("fd", "refs", "dropped", "evictable")

    def __init__(self, fd: int, evictable: bool) -> None:
        self.fd = fd
        self.refs = 0
        self.dropped = False
        self.evictable = evictable


class FdCache:
    """fds by key with reference counts; idle O_PATH fds are evicted beyond `max_idle`.

    acquire() returns a slot whose fd stays valid until the matching release(),
    even if drop() runs in between (the close is deferred to the last release).
    """

    def __init__(self, max_idle: int = 1024) -> None:
        self.max_idle = max_idle
        self._d: dict[Hashable, FdSlot] = {}
        self._lock = threading.Lock()
        self._idle = 0

    def acquire(self, key: Hashable, opener: Callable[[], int], evictable: bool = True) -> FdSlot:
        with self._lock:
            slot = self._d.get(key)
            if slot is not None:
                slot.refs += 1
                return slot
        fd = opener()  # may block or raise; done without the lock
        with self._lock:
            slot = self._d.get(key)
            if slot is not None:  # another thread won the race
                slot.refs += 1
                extra = fd
            else:
                slot = FdSlot(fd, evictable)
                slot.refs = 1
                self._d[key] = slot
                extra = -1
                if evictable:
                    self._idle += 1
                    if self._idle > self.max_idle:
                        self._evict_locked()
        if extra >= 0:
            os.close(extra)
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
            self._d[key] = FdSlot(fd, evictable)
            if evictable:
                self._idle += 1

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

    def _evict_locked(self) -> None:
        # Oldest-inserted idle path fds go first; open files are never evicted.
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
