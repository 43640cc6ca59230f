"""qid.path values unique across every host filesystem mounted inside an export.

Each host st_dev gets a 16-bit prefix (the export's own device gets 0, so its
qid.path is the plain inode number); inode numbers too big for the remaining 48
bits, and every inode of a device past the last prefix, get a number of their own
from an overflow map.

Who numbers: a store. ProcessQidStore numbers in this process (the socket
transport: one process serves the whole session); shared.shm_qids.ShmQidStore
numbers in the device's shared state, so every ring worker of a device, and every
replacement of a dead one, gives an inode the same qid.path. Numbers a store gave
never change, so QidPathMap keeps a per-process copy and asks the store only on a miss.
"""
from __future__ import annotations

import errno
import threading
from typing import Protocol

_INO_BITS = 48
_INO_MASK = (1 << _INO_BITS) - 1
NO_PREFIX = 0xFFFF  # prefix 0xFFFF is reserved for the overflow map
MAX_OVERFLOW = 1 << _INO_BITS
_OVERFLOW_BASE = NO_PREFIX << _INO_BITS


class QidStore(Protocol):
    def prefix(self, dev: int) -> int:
        """dev's prefix (the first device asked about gets 0), NO_PREFIX once they run out."""

    def overflow(self, dev: int, ino: int) -> int:
        """A number below MAX_OVERFLOW for (dev, ino); OSError(EOVERFLOW) when they run out."""


class ProcessQidStore:
    """Numbers kept in this process only."""

    def __init__(self) -> None:
        self._prefix: dict[int, int] = {}
        self._overflow: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    def prefix(self, dev: int) -> int:
        with self._lock:
            return self._prefix.setdefault(dev, min(len(self._prefix), NO_PREFIX))

    def overflow(self, dev: int, ino: int) -> int:
        with self._lock:
            v = self._overflow.get((dev, ino))
            if v is None:
                if len(self._overflow) >= MAX_OVERFLOW:
                    raise OSError(errno.EOVERFLOW, "qid path space exhausted")
                v = self._overflow[(dev, ino)] = len(self._overflow)
            return v


class QidPathMap:
    def __init__(self, root_dev: int, store: QidStore | None = None) -> None:
        self._store: QidStore = store if store is not None else ProcessQidStore()
        self._prefix: dict[int, int] = {}
        self._overflow: dict[tuple[int, int], int] = {}
        if self._prefix_of(root_dev) != 0:
            raise OSError(errno.EXDEV, "the export's filesystem is not the one its qid map was made for")

    def _prefix_of(self, dev: int) -> int:
        p = self._prefix.get(dev)
        if p is None:
            p = self._prefix[dev] = self._store.prefix(dev)
        return p

    def path(self, dev: int, ino: int) -> int:
        p = self._prefix_of(dev)
        if ino <= _INO_MASK and p != NO_PREFIX:
            return (p << _INO_BITS) | ino
        v = self._overflow.get((dev, ino))
        if v is None:
            v = self._overflow[(dev, ino)] = _OVERFLOW_BASE | self._store.overflow(dev, ino)
        return v

    def base(self, dev: int) -> int | None:
        """The bits path(dev, ino) ORs a 48-bit ino into; None when dev's paths all go to the overflow map."""
        p = self._prefix_of(dev)
        return p << _INO_BITS if p != NO_PREFIX else None
