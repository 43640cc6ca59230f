"""Cross-process mutual exclusion that a crashed holder cannot wedge, plus seqlock helpers.

An OFD byte-range lock on the segment's own fd: the kernel drops it when the holder dies.
"""
from __future__ import annotations

import fcntl
import os
import struct
import threading
import time

# struct flock (x86-64/arm64): l_type h, l_whence h, l_start q, l_len q, l_pid i (+pad)
_FLOCK = struct.Struct("hhqqi4x")
_U64 = struct.Struct("<Q")

# Byte offsets used as lock "names" (far beyond the segment's size is fine for fcntl locks).
LOCK_TABLE_BYTE = 1 << 40          # the whole table mutex
RING_CLAIM_BYTE = (1 << 40) + 64   # + ring index: held by the live worker of that ring


def ofd_lock(fd: int, kind: int, start: int, length: int = 1, wait: bool = True) -> bool:
    """Take/release an open-file-description lock; False if wait=False and it is held."""
    cmd = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
    try:
        fcntl.fcntl(fd, cmd, _FLOCK.pack(kind, os.SEEK_SET, start, length, 0))
    except OSError as e:
        if not wait and e.errno in (11, 13):  # EAGAIN, EACCES
            return False
        raise
    return True


class ShmMutex:
    """A thread lock (threads of one process share the fd, so OFD locks do not part them)
    in front of an OFD write lock (which parts processes and dies with its holder).

    `on_acquire(recovered)` runs with the lock held; `recovered` is True when the seqlock
    word was left odd, i.e. the previous holder died in the middle of an update.
    """

    def __init__(self, fd: int, buf: memoryview, seq_offset: int, byte: int = LOCK_TABLE_BYTE,
                 repair=None) -> None:
        self._fd = fd
        self._buf = buf
        self._seq = seq_offset
        self._byte = byte
        self._tlock = threading.Lock()
        self._repair = repair

    def __enter__(self) -> "ShmMutex":
        self._tlock.acquire()
        try:
            ofd_lock(self._fd, fcntl.F_WRLCK, self._byte)
        except BaseException:
            self._tlock.release()
            raise
        seq = _U64.unpack_from(self._buf, self._seq)[0]
        if seq & 1:
            # The last writer died mid-update: rebuild what is derived, then mark consistent.
            if self._repair is not None:
                self._repair()
            _U64.pack_into(self._buf, self._seq, seq + 1)
        return self

    def __exit__(self, *exc) -> None:
        try:
            ofd_lock(self._fd, fcntl.F_UNLCK, self._byte)
        finally:
            self._tlock.release()

    # -- seqlock: writers hold the mutex; readers retry on an odd or changed word ----------

    def write_begin(self) -> None:
        seq = _U64.unpack_from(self._buf, self._seq)[0]
        _U64.pack_into(self._buf, self._seq, seq + 1)

    def write_end(self) -> None:
        seq = _U64.unpack_from(self._buf, self._seq)[0]
        _U64.pack_into(self._buf, self._seq, seq + 1)

    def read_seq(self) -> int:
        return _U64.unpack_from(self._buf, self._seq)[0]

    def read(self, fn, stuck_after: float = 0.05):
        """Run the read-only `fn()` until no writer interfered; repair if a writer died."""
        deadline = None
        while True:
            s1 = _U64.unpack_from(self._buf, self._seq)[0]
            if not s1 & 1:
                try:
                    result = fn()
                except Exception:
                    result = _TORN
                if _U64.unpack_from(self._buf, self._seq)[0] == s1:
                    if result is _TORN:
                        result = fn()  # a real error, not a torn read: raise it
                    return result
                continue
            # A writer is active, or died holding the word odd: taking the mutex settles it
            # (the kernel released a dead holder's lock; __enter__ repairs).
            now = time.monotonic()
            if deadline is None:
                deadline = now + stuck_after
            elif now >= deadline:
                with self:
                    return fn()
            else:
                time.sleep(0)


_TORN = object()
