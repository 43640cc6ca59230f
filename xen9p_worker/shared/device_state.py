"""The state one device's ring workers share, in POSIX shared memory created by the supervisor.

Fid table, session (msize, version), per-ring journals of requests in flight, lock table, counters,
qid.path numbering (so every ring, and a restarted worker, numbers an inode alike).

Segment: /dev/shm/<name> (the same object multiprocessing.shared_memory.SharedMemory(name)
opens on Linux). It is opened directly, without multiprocessing's resource tracker: in
Python 3.11 every attach registers the segment and the tracker unlinks it when the
attaching process exits, which would destroy the device state when a worker dies.
Only whoever created it (the supervisor) calls unlink().

Concurrency: writers take one mutex (a thread lock + an OFD lock on the segment's fd,
which the kernel drops when a holder dies; the next taker sees the seqlock word odd and
rebuilds the derived index). Readers are lock-free: seqlock + per-slot sequence numbers.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import struct

from xen9p_common.errors import Xen9pError

from xen9p_worker.shared import layout as L
from xen9p_worker.shared.journal import RingJournal
from xen9p_worker.shared.mutex import RING_CLAIM_BYTE, ShmMutex, ofd_lock
from xen9p_worker.shared.shm_fids import ShmFidTable
from xen9p_worker.shared.shm_locks import ShmLockTable
from xen9p_worker.shared.shm_qids import ShmQidStore

SHM_DIR = "/dev/shm"
# Per-ring counters kept in the ring header (written by that ring's worker only).
RING_COUNTERS = ("requests_total", "replies_total", "bytes_in_total", "bytes_out_total",
                 "errors_total", "resumed_total", "flushes_total", "in_flight")
_RING_COUNTERS_OFF = 64


class DeviceStateError(Xen9pError):
    """The device state segment is missing, malformed or of another layout."""


class SessionState:
    """msize and version of the device's one 9P session (Tversion on any ring resets it)."""

    def __init__(self, ds: "DeviceState") -> None:
        self._ds = ds
        self._buf = ds.buf

    @property
    def msize(self) -> int:
        return L.U32.unpack_from(self._buf, L.H_MSIZE)[0]

    @msize.setter
    def msize(self, value: int) -> None:
        with self._ds.mutex:
            L.U32.pack_into(self._buf, L.H_MSIZE, value)

    @property
    def version(self) -> str:
        return L.get_str(self._buf, L.H_VERSION).decode("ascii", "replace")

    @version.setter
    def version(self, value: str) -> None:
        with self._ds.mutex:
            L.put_str(self._buf, L.H_VERSION, value.encode()[:31], 32)

    @property
    def epoch(self) -> int:
        """Bumped by every reset: each worker drops its per-process state when it moves."""
        return L.U64.unpack_from(self._buf, L.H_SESSION_EPOCH)[0]

    def bump_epoch(self) -> None:
        with self._ds.mutex:
            L.U64.pack_into(self._buf, L.H_SESSION_EPOCH, self.epoch + 1)

    def reset(self, msize: int, version: str) -> list:
        """Tversion: new msize/version, every fid clunked and every lock dropped, for all rings."""
        with self._ds.mutex:
            L.U32.pack_into(self._buf, L.H_MSIZE, msize)
            L.put_str(self._buf, L.H_VERSION, version.encode()[:31], 32)
            L.U64.pack_into(self._buf, L.H_SESSION_EPOCH, self.epoch + 1)
        removed = self._ds.fids.clear()
        self._ds.locks.release_all()
        return removed


class DeviceState:
    """One device's shared state. create() by the supervisor, attach() by each ring worker."""

    LAYOUT_VERSION = L.LAYOUT_VERSION

    @staticmethod
    def layout_version(name: str) -> int | None:
        """The layout version segment `name` declares; None if it is not a xen9p device state."""
        _check_name(name)
        try:
            with open(os.path.join(SHM_DIR, name), "rb") as f:
                head = f.read(L.H_LAYOUT + 4)
        except OSError:
            return None
        if len(head) < L.H_LAYOUT + 4 or head[:7] != L.MAGIC[:7]:  # XEN9PDS<n>: any layout's
            return None
        return L.U32.unpack_from(head, L.H_LAYOUT)[0]

    def __init__(self, name: str, fd: int, mem: mmap.mmap, owner: bool) -> None:
        self.name = name
        self.owner = owner
        self._fd = fd
        self._mem = mem
        self.buf = memoryview(mem)
        if bytes(self.buf[0:8]) != L.MAGIC or L.U32.unpack_from(self.buf, L.H_LAYOUT)[0] != L.LAYOUT_VERSION:
            self._release()
            raise DeviceStateError(f"{name}: not a xen9p device state (layout {L.LAYOUT_VERSION})")
        u32 = lambda off: L.U32.unpack_from(self.buf, off)[0]  # noqa: E731
        self.layout = L.Layout(max_fids=u32(L.H_MAX_FIDS), num_rings=u32(L.H_NUM_RINGS),
                               xattr_slots=u32(L.H_XATTR_SLOTS), lock_slots=u32(L.H_LOCK_SLOTS),
                               journal_slots=u32(L.H_JOURNAL_SLOTS), qid_devs=u32(L.H_QID_DEVS),
                               qid_overflow=u32(L.H_QID_OVERFLOW))
        if self.layout.total > len(self.buf):
            self._release()
            raise DeviceStateError(f"{name}: segment of {len(self.buf)} bytes is smaller than its layout")
        self.max_fids = self.layout.max_fids
        self.num_rings = self.layout.num_rings
        self.max_open_files = u32(L.H_MAX_OPEN)
        self.msize_cap = u32(L.H_MSIZE_CAP)
        self.max_space_mb = L.U64.unpack_from(self.buf, L.H_MAX_SPACE_MB)[0]
        self.max_files = u32(L.H_MAX_FILES)
        self.auto_delete = bool(self.buf[L.H_AUTO_DELETE])
        self.readonly = bool(self.buf[L.H_READONLY])
        self.security_model = L.get_str(self.buf, L.H_SECURITY).decode()
        self.export = os.fsdecode(L.get_str(self.buf, L.H_EXPORT, wide=True))
        self.fids = ShmFidTable(self.buf, self.layout, None)  # type: ignore[arg-type]
        self.mutex = ShmMutex(fd, self.buf, L.H_FID_SEQ, repair=self.fids.repair)
        self.fids._mu = self.mutex
        self.lock_mutex = ShmMutex(fd, self.buf, L.H_LOCK_SEQ, byte=RING_CLAIM_BYTE - 1)
        self.locks = ShmLockTable(self.buf, self.layout, self.lock_mutex)
        self.qid_mutex = ShmMutex(fd, self.buf, L.H_QID_SEQ, byte=RING_CLAIM_BYTE - 2)
        self.qids = ShmQidStore(self.buf, self.layout, self.qid_mutex)
        self.session = SessionState(self)
        self._journals: dict[int, RingJournal] = {}

    # -- lifetime ----------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, *, max_fids: int, max_open_files: int, max_space_mb: int,
               export: str, security_model: str, msize_cap: int, num_rings: int,
               xattr_slots: int = 16, lock_slots: int = 1024, journal_slots: int = 256,
               max_files: int = 0, auto_delete: bool = False, readonly: bool = False, qid_devs: int = 1024,
               qid_overflow: int = 16384) -> "DeviceState":
        """Make a fresh segment; FileExistsError if the name is taken."""
        _check_name(name)
        if not 1 <= num_rings <= 64 or max_fids < 1 or journal_slots < 1:
            raise ValueError("num_rings must be 1..64, max_fids and journal_slots >= 1")
        lay = L.Layout(max_fids=max_fids, num_rings=num_rings, xattr_slots=xattr_slots,
                       lock_slots=lock_slots, journal_slots=journal_slots, qid_devs=qid_devs,
                       qid_overflow=qid_overflow)
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, lay.total)  # sparse: pages cost memory only once touched
            # ... except the header written below: on a full /dev/shm, touching an unbacked page of
            # the mapping is SIGBUS (it killed xen9pd); reserving it first fails with ENOSPC instead.
            os.posix_fallocate(fd, 0, min(lay.total, L.HEADER_SIZE))
            mem = mmap.mmap(fd, lay.total, mmap.MAP_SHARED)
            buf = memoryview(mem)
            # Everything but the magic first; the magic last marks the segment complete.
            for off, val in ((L.H_LAYOUT, L.LAYOUT_VERSION), (L.H_MAX_FIDS, max_fids),
                             (L.H_NUM_RINGS, num_rings), (L.H_MSIZE_CAP, msize_cap),
                             (L.H_MAX_OPEN, max_open_files), (L.H_XATTR_SLOTS, xattr_slots),
                             (L.H_LOCK_SLOTS, lock_slots), (L.H_JOURNAL_SLOTS, journal_slots),
                             (L.H_BUCKETS, lay.buckets), (L.H_MAX_FILES, max_files),
                             (L.H_QID_DEVS, qid_devs), (L.H_QID_OVERFLOW, qid_overflow)):
                L.U32.pack_into(buf, off, val)
            L.U64.pack_into(buf, L.H_MAX_SPACE_MB, max_space_mb)
            buf[L.H_AUTO_DELETE] = 1 if auto_delete else 0
            buf[L.H_READONLY] = 1 if readonly else 0
            L.put_str(buf, L.H_SECURITY, security_model.encode(), 64)
            L.put_str(buf, L.H_EXPORT, os.fsencode(export), L.HEADER_SIZE - L.H_EXPORT, wide=True)
            buf[0:8] = L.MAGIC
            buf.release()
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return cls(name, fd, mem, owner=True)

    @classmethod
    def attach(cls, name: str) -> "DeviceState":
        _check_name(name)
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DeviceStateError(f"no device state {name!r} in {SHM_DIR}") from None
        try:
            size = os.fstat(fd).st_size
            if size < L.HEADER_SIZE:
                raise DeviceStateError(f"{name}: segment too small ({size} bytes)")
            mem = mmap.mmap(fd, size, mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            raise
        return cls(name, fd, mem, owner=False)

    @property
    def segment_fd(self) -> int:
        """The open segment (the lock keeper inherits it: it lives while the segment keeps a name)."""
        return self._fd

    def _release(self) -> None:
        try:
            self.buf.release()
        except Exception:
            pass
        try:
            self._mem.close()
        except BufferError:
            pass  # views still held by callers: the mapping goes with the last one
        os.close(self._fd)
        self._fd = -1

    def close(self) -> None:
        if self._fd < 0:
            return
        self.locks.close()
        for j in self._journals.values():
            j._buf = None  # type: ignore[assignment]
        self.fids._buf = self.mutex._buf = self.lock_mutex._buf = None  # type: ignore[assignment]
        self.qids._buf = self.qid_mutex._buf = None  # type: ignore[assignment]
        self.locks._buf = self.session._buf = None  # type: ignore[assignment]
        self._release()

    def unlink(self) -> None:
        """Remove the segment name (the supervisor, when the device goes); mappings stay valid."""
        try:
            os.unlink(os.path.join(SHM_DIR, self.name))
        except FileNotFoundError:
            pass

    def __enter__(self) -> "DeviceState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- rings -------------------------------------------------------------------------

    def journal(self, ring: int) -> RingJournal:
        j = self._journals.get(ring)
        if j is None:
            j = self._journals[ring] = RingJournal(self.buf, self.layout, ring)
        return j

    def claim_ring(self, ring: int) -> bool:
        """Become the one live worker of `ring` (held until this process exits or closes)."""
        if not 0 <= ring < self.num_rings:
            raise ValueError(f"ring {ring} outside 0..{self.num_rings - 1}")
        return ofd_lock(self._fd, fcntl.F_WRLCK, RING_CLAIM_BYTE + ring, wait=False)

    def ring_counters(self, ring: int) -> dict[str, int]:
        off = self.layout.ring_off(ring) + _RING_COUNTERS_OFF
        vals = struct.unpack_from(f"<{len(RING_COUNTERS)}Q", self.buf, off)
        return dict(zip(RING_COUNTERS, vals))

    def store_ring_counters(self, ring: int, values: dict[str, int]) -> None:
        off = self.layout.ring_off(ring) + _RING_COUNTERS_OFF
        struct.pack_into(f"<{len(RING_COUNTERS)}Q", self.buf, off,
                         *(int(values.get(k, 0)) & (2**64 - 1) for k in RING_COUNTERS))

    def counters(self) -> dict[str, int]:
        """Device totals: the rings' counters summed, plus fids and open files."""
        tot = dict.fromkeys(RING_COUNTERS, 0)
        for r in range(self.num_rings):
            for k, v in self.ring_counters(r).items():
                tot[k] += v
        tot["fids"] = self.fids.count()
        tot["open_files"] = self.fids.count_open()
        return tot


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or len(name) > 200:
        raise ValueError(f"bad shared-memory name {name!r}")
