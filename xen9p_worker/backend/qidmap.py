"""qid.path values unique across every host filesystem mounted inside an export.

Each host st_dev gets a 16-bit prefix (the export's own device gets 0, so its
qid.path is the plain inode number); inode numbers too big for the remaining 48
bits get an entry of their own in an overflow map.
"""
from __future__ import annotations

import threading

_INO_BITS = 48
_INO_MASK = (1 << _INO_BITS) - 1
_OVERFLOW_BASE = 0xFFFF << _INO_BITS  # prefix 0xFFFF is reserved for the overflow map


class QidPathMap:
    def __init__(self, root_dev: int) -> None:
        self._prefix: dict[int, int] = {root_dev: 0}
        self._overflow: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()

    def path(self, dev: int, ino: int) -> int:
        p = self._prefix.get(dev)
        if p is None:
            p = self._new_prefix(dev)
        if ino <= _INO_MASK and p < 0xFFFF:
            return (p << _INO_BITS) | ino
        return self._overflow_path(dev, ino)

    def base(self, dev: int) -> int | None:
        """The bits path(dev, ino) ORs a 48-bit ino into; None when dev's paths all go to the overflow map."""
        p = self._prefix.get(dev)
        if p is None:
            p = self._new_prefix(dev)
        return p << _INO_BITS if p < 0xFFFF else None

    def _new_prefix(self, dev: int) -> int:
        with self._lock:
            p = self._prefix.get(dev)
            if p is None:
                # Past 0xFFFE devices everything goes through the overflow map.
                p = min(len(self._prefix), 0xFFFF)
                self._prefix[dev] = p
            return p

    def _overflow_path(self, dev: int, ino: int) -> int:
        with self._lock:
            v = self._overflow.get((dev, ino))
            if v is None:
                if len(self._overflow) > _INO_MASK:
                    raise OSError(75, "qid path space exhausted")  # EOVERFLOW
                v = _OVERFLOW_BASE | len(self._overflow)
                self._overflow[(dev, ino)] = v
            return v
