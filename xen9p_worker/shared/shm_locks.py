"""POSIX byte-range locks in the device's shared memory: locks.LockTable for every ring worker at once.

Same semantics as LocalLockTable; waiters are per process and retried when any process changes the table.
With `host` set (ring workers: a hostlocks.HostLocks), every granted range is also held on the host
file, and a host holder's conflicting lock blocks a request like another owner's.
"""
from __future__ import annotations

import errno
import hashlib
import struct
import threading
from typing import Callable, Hashable

from xen9p_common.p9.constants import LOCK_TYPE_RDLCK, LOCK_TYPE_UNLCK, LOCK_TYPE_WRLCK

from ..hostlocks import HostLocks, apply_coverage, ofd_set, ofd_test
from ..locks import Lock, LockTable, Waiter, _conflicts, apply_lock, lock_range
from . import layout as L
from .mutex import ShmMutex

# kind u8 (0 free, 1 lock, 2 fid mark) | type u8 | pad u16 | fid u32 | start u64 | end u64
# | proc_id u32 | key 16s | pad | client_id (u8 len + 63) @ 48
_REC = struct.Struct("<BBHIQQI16s")
_CLIENT_OFF = 48
K_FREE, K_LOCK, K_MARK = 0, 1, 2
_INF_STORED = (1 << 64) - 1  # stands for locks.INF (1 << 64) which does not fit a u64
_RETRY_INTERVAL = 0.005
_HOST_RETRY_EVERY = 10  # poller rounds between retries for a host holder (no table change tells of its unlock)


def key_digest(key: Hashable) -> bytes:
    """Stable across processes (unlike hash() of str/bytes): 16 bytes of blake2b of repr."""
    return hashlib.blake2b(repr(key).encode(), digest_size=16).digest()


class ShmLockTable(LockTable):
    """locks.LockTable over `lock_slots` records of a DeviceState segment.

    ENOLCK when the records run out (the guest holds too many distinct ranges).
    """

    def __init__(self, buf: memoryview, lay: L.Layout, mutex: ShmMutex) -> None:
        self._buf = buf
        self._lay = lay
        self._mu = mutex
        self._waiters: list[Waiter] = []
        self._wmu = threading.Lock()
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self.host: HostLocks | None = None

    # -- record access (mutex held) -----------------------------------------------------

    def _off(self, i: int) -> int:
        return self._lay.locks_off + i * L.LOCK_REC_SIZE

    def _load(self, kd: bytes) -> tuple[list[Lock], list[tuple], list[int]]:
        """Locks and (owner, fid) marks on the key, and every record index they used."""
        locks, marks, used = [], [], []
        buf = self._buf
        for i in range(self._lay.lock_slots):
            off = self._off(i)
            if buf[off] == K_FREE:
                continue
            kind, type_, _, fid, start, end, proc, key = _REC.unpack_from(buf, off)
            if key != kd:
                continue
            client = L.get_str(buf, off + _CLIENT_OFF).decode("utf-8", "replace")
            owner = (client, proc)
            end = L_INF if end == _INF_STORED else end
            if kind == K_LOCK:
                locks.append(Lock(start, end, type_, owner))
            else:
                marks.append((owner, fid))
            used.append(i)
        return locks, marks, used

    def _store(self, kd: bytes, locks: list[Lock], marks: list[tuple], used: list[int]) -> None:
        need = len(locks) + len(marks)
        free = [i for i in used]
        buf = self._buf
        if need > len(free):
            for i in range(self._lay.lock_slots):
                if len(free) >= need:
                    break
                if buf[self._off(i)] == K_FREE:
                    free.append(i)
            if need > len(free):
                raise OSError(errno.ENOLCK, "the device's lock table is full")
        self._mu.write_begin()
        try:
            recs = [(K_LOCK, lk.type, 0, lk.start, lk.end, lk.owner) for lk in locks]
            recs += [(K_MARK, 0, fid, 0, 0, owner) for owner, fid in marks]
            for i, (kind, type_, fid, start, end, owner) in zip(free, recs):
                off = self._off(i)
                client = str(owner[0]).encode()[:63]
                _REC.pack_into(buf, off, kind, type_, 0, fid, start,
                               _INF_STORED if end >= L_INF else end, int(owner[1]) & 0xFFFFFFFF, kd)
                L.put_str(buf, off + _CLIENT_OFF, client, 64)
            for i in free[len(recs):]:
                buf[self._off(i)] = K_FREE
            gen = L.U64.unpack_from(buf, L.H_LOCK_GEN)[0]
            L.U64.pack_into(buf, L.H_LOCK_GEN, gen + 1)
        finally:
            self._mu.write_end()

    @staticmethod
    def _norm(owner) -> tuple:
        # Owners are stored as (client_id[:63], proc_id): compare in that form everywhere.
        return (str(owner[0]).encode()[:63].decode("utf-8", "replace"), int(owner[1]) & 0xFFFFFFFF)

    def _try(self, kd: bytes, owner, type_: int, s: int, e: int, fid: int, hfd: int | None) -> bool:
        locks, marks, used = self._load(kd)
        out = apply_lock(locks, owner, type_, s, e)
        if out is None:
            return False
        # No other owner of the device holds [s, e) against this: the host OFD takes type_ there
        # unless someone outside the device does.
        if hfd is not None and type_ != LOCK_TYPE_UNLCK and not ofd_set(hfd, type_, s, e):
            return False
        if type_ in (LOCK_TYPE_RDLCK, LOCK_TYPE_WRLCK) and (owner, fid) not in marks:
            marks.append((owner, fid))
        try:
            self._store(kd, out, marks, used)
        except BaseException:
            if hfd is not None:
                apply_coverage(hfd, locks, s, e)
            raise
        if hfd is not None and type_ == LOCK_TYPE_UNLCK:
            apply_coverage(hfd, out, s, e)
        return True

    def _host_fd(self, kd: bytes, opener) -> int | None:
        return self.host.fd(kd, opener) if self.host is not None else None

    # -- LockTable ----------------------------------------------------------------------

    def test(self, key, owner, type_, start, length, opener=None):
        owner = self._norm(owner)
        s, e = lock_range(start, length)
        kd = key_digest(key)
        hfd = self._host_fd(kd, opener)
        with self._mu:
            for lk in self._load(kd)[0]:
                if _conflicts(lk, type_, s, e, owner):
                    return lk
            if hfd is None or type_ == LOCK_TYPE_UNLCK:
                return None
            return ofd_test(hfd, type_, s, e)

    def lock(self, key, owner, type_, start, length, fid, opener=None):
        owner = self._norm(owner)
        s, e = lock_range(start, length)
        kd = key_digest(key)
        hfd = self._host_fd(kd, opener)
        with self._mu:
            ok = self._try(kd, owner, type_, s, e, fid, hfd)
        if ok:
            self._wake()
        return ok

    def lock_or_wait(self, key, owner, type_, start, length, fid,
                     callback: Callable[[bool], None], opener=None) -> Waiter | None:
        owner = self._norm(owner)
        s, e = lock_range(start, length)
        kd = key_digest(key)
        hfd = self._host_fd(kd, opener)
        with self._mu:
            if self._try(kd, owner, type_, s, e, fid, hfd):
                w = None
            else:
                w = Waiter(key, owner, type_, s, e, fid, callback)
                with self._wmu:
                    self._waiters.append(w)
        self._wake()
        if w is not None:
            self._ensure_poller()
        return w

    def cancel(self, waiter):
        with self._wmu:
            if waiter.done:
                return False
            waiter.done = True
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            return True

    def release_fid(self, key, fid):
        kd = key_digest(key)
        hfd = self._host_fd(kd, None)
        with self._mu:
            locks, marks, used = self._load(kd)
            owners = {o for o, f in marks if f == fid}
            if not owners:
                return
            gone = [lk for lk in locks if lk.owner in owners]
            locks = [lk for lk in locks if lk.owner not in owners]
            marks = [(o, f) for o, f in marks if o not in owners]
            self._store(kd, locks, marks, used)
            if hfd is not None:
                for lk in gone:
                    apply_coverage(hfd, locks, lk.start, lk.end)
        self._wake()

    def locks(self, key):
        with self._mu:
            return self._load(key_digest(key))[0]

    def release_all(self) -> None:
        """Tversion: the session's locks all go."""
        with self._mu:
            self._mu.write_begin()
            try:
                for i in range(self._lay.lock_slots):
                    self._buf[self._off(i)] = K_FREE
                gen = L.U64.unpack_from(self._buf, L.H_LOCK_GEN)[0]
                L.U64.pack_into(self._buf, L.H_LOCK_GEN, gen + 1)
            finally:
                self._mu.write_end()
            if self.host is not None:
                self.host.unlock_all()
        self._wake()

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=1.0)
        if self.host is not None:
            self.host.close()

    # -- waiters ------------------------------------------------------------------------

    def _wake(self) -> None:
        """Retry this process's waiters; grant those that fit now."""
        with self._wmu:
            pending = [w for w in self._waiters if not w.done]
        granted = []
        for w in pending:
            kd = key_digest(w.key)
            hfd = self._host_fd(kd, None)
            with self._mu:
                with self._wmu:
                    if w.done:
                        continue
                if self._try(kd, w.owner, w.type, w.start, w.end, w.fid, hfd):
                    with self._wmu:
                        w.done = True
                        if w in self._waiters:
                            self._waiters.remove(w)
                    granted.append(w)
        for w in granted:
            w.callback(True)

    def _ensure_poller(self) -> None:
        with self._wmu:
            if self._poller is not None and self._poller.is_alive():
                return
            self._poller = threading.Thread(target=self._poll, name="shm-lock-waiters", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        # Another process's unlock does not reach our waiters any other way; Tlock waits
        # are rare and long, so a short poll of one shared counter is cheap enough.
        last = None
        rounds = 0
        while not self._stop.is_set():
            with self._wmu:
                if not self._waiters:
                    self._poller = None
                    return
            gen = L.U64.unpack_from(self._buf, L.H_LOCK_GEN)[0]
            rounds += 1
            if gen != last or (self.host is not None and rounds % _HOST_RETRY_EVERY == 0):
                last = gen
                self._wake()
            self._stop.wait(_RETRY_INTERVAL)


L_INF = 1 << 64
