"""qid.path numbering in the device's shared state (backend.qidmap.QidStore for every ring worker).

Section: `qid_devs` u64 entries, st_dev + 1 each (0: free), the index being the prefix;
then `qid_overflow` entries (st_dev + 1, ino) of an open-addressing hash table, the
slot index being the number. Entries are only ever added, each under the mutex and
with its st_dev word written last, so a holder that dies mid-write leaves a free entry
(nobody saw a number from it: the reply was never sent) and readers need no seqlock.
Workers cache what they read, so the mutex is taken only for numbers new to a process.
"""
from __future__ import annotations

import errno
import struct

from ..backend.qidmap import NO_PREFIX
from . import layout as L
from .mutex import ShmMutex

_U64 = struct.Struct("<Q")
_PAIR = struct.Struct("<QQ")
_MIX = 0x9E3779B97F4A7C15


class ShmQidStore:
    def __init__(self, buf: memoryview, lay: L.Layout, mutex: ShmMutex) -> None:
        self._buf = buf
        self._lay = lay
        self._mu = mutex

    def prefix(self, dev: int) -> int:
        want = dev + 1
        base = self._lay.qid_devs_off
        with self._mu:
            for i in range(min(self._lay.qid_devs, NO_PREFIX)):
                off = base + i * L.QID_DEV_SIZE
                have = _U64.unpack_from(self._buf, off)[0]
                if have == want:
                    return i
                if have == 0:
                    _U64.pack_into(self._buf, off, want)
                    return i
        return NO_PREFIX

    def overflow(self, dev: int, ino: int) -> int:
        want = dev + 1
        n = self._lay.qid_overflow
        base = self._lay.qid_overflow_off
        start = ((want * _MIX) ^ ino) % n if n else 0
        with self._mu:
            for k in range(n):
                i = (start + k) % n
                off = base + i * L.QID_OVERFLOW_SIZE
                have, have_ino = _PAIR.unpack_from(self._buf, off)
                if have == want and have_ino == ino:
                    return i
                if have == 0:
                    _U64.pack_into(self._buf, off + 8, ino)
                    _U64.pack_into(self._buf, off, want)  # last: the entry exists from here on
                    return i
        raise OSError(errno.EOVERFLOW, "the device's qid overflow map is full")
