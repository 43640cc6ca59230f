"""Where everything lives in a device-state segment: a fixed header, then sized sections.

Offsets depend only on the sizes stored in the header, so any process can attach by name.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"XEN9PDS1"
LAYOUT_VERSION = 2  # 2: the qid.path numbering section (shm_qids)
HEADER_SIZE = 8192

# Header fields (byte offsets).
H_MAGIC = 0            # 8s
H_LAYOUT = 8           # u32
H_MAX_FIDS = 12        # u32
H_NUM_RINGS = 16       # u32
H_MSIZE_CAP = 20       # u32
H_MAX_OPEN = 24        # u32
H_XATTR_SLOTS = 28     # u32
H_MAX_SPACE_MB = 32    # u64
H_LOCK_SLOTS = 40      # u32
H_JOURNAL_SLOTS = 44   # u32
H_BUCKETS = 48         # u32
H_MAX_FILES = 52       # u32 (max-files from the toolstack; informational)
H_AUTO_DELETE = 56     # u8
H_READONLY = 57        # u8: EROFS to every modifying request (xen9pd's export policy)
H_SECURITY = 64        # u8 len + 63 bytes
H_FID_SEQ = 256        # u64 seqlock word of the fid table (and the session)
H_FID_NEXTGEN = 264    # u64
H_FID_COUNT = 272      # u32
H_FID_OPEN = 276       # u32
H_FREE_TOP = 280       # u32: entries on the free-slot stack
H_FID_HWM = 284        # u32: slots below have been used (scans stop here)
H_FID_EPOCH = 288      # u64: bumped by every remove/clear (other workers sweep their fds)
H_MSIZE = 320          # u32 negotiated msize, 0 before the first Tversion
H_SESSION_EPOCH = 328  # u64 bumped by every Tversion
H_VERSION = 336        # u8 len + 31 bytes
H_LOCK_SEQ = 384       # u64 seqlock word of the lock table
H_LOCK_GEN = 392       # u64 bumped by every change (waiters in other processes retry)
H_QID_SEQ = 400        # u64 word of the qid numbering mutex (never odd: entries are written whole)
H_QID_DEVS = 408       # u32 st_dev entries (prefixes) in the qid section
H_QID_OVERFLOW = 412   # u32 (st_dev, ino) entries of the qid overflow map
H_FDS_RECLAIMED = 416  # u8: some worker closed an open fid's fd under fd pressure (fdcache)
H_COUNTERS = 512       # 64 x u64 device counters
N_COUNTERS = 64
H_EXPORT = 4096        # u16 len + up to 4094 bytes

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")

FID_SLOT_SIZE = 5120
FID_PATH_MAX = 4096
XATTR_MAX = 65536
XATTR_BLOB_SIZE = 16 + XATTR_MAX
LOCK_REC_SIZE = 128
JOURNAL_REC_SIZE = 512
RING_HEADER_SIZE = 256
QID_DEV_SIZE = 8          # u64 st_dev + 1 (0: free)
QID_OVERFLOW_SIZE = 16    # u64 st_dev + 1 (0: free), u64 ino


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


@dataclass(frozen=True)
class Layout:
    max_fids: int
    num_rings: int
    xattr_slots: int
    lock_slots: int
    journal_slots: int
    qid_devs: int = 1024
    qid_overflow: int = 16384

    @property
    def buckets(self) -> int:
        return _pow2_at_least(max(16, 2 * self.max_fids))

    @property
    def buckets_off(self) -> int:
        return HEADER_SIZE

    @property
    def free_off(self) -> int:
        return self.buckets_off + 8 * self.buckets

    @property
    def slots_off(self) -> int:
        return _align(self.free_off + 4 * self.max_fids)

    @property
    def xattr_off(self) -> int:
        return self.slots_off + FID_SLOT_SIZE * self.max_fids

    @property
    def locks_off(self) -> int:
        return _align(self.xattr_off + XATTR_BLOB_SIZE * self.xattr_slots)

    @property
    def rings_off(self) -> int:
        return _align(self.locks_off + LOCK_REC_SIZE * self.lock_slots)

    @property
    def ring_area(self) -> int:
        return RING_HEADER_SIZE + JOURNAL_REC_SIZE * self.journal_slots

    def ring_off(self, ring: int) -> int:
        return self.rings_off + ring * self.ring_area

    @property
    def qid_devs_off(self) -> int:
        return _align(self.rings_off + self.ring_area * self.num_rings)

    @property
    def qid_overflow_off(self) -> int:
        return self.qid_devs_off + QID_DEV_SIZE * self.qid_devs

    @property
    def total(self) -> int:
        return _align(self.qid_overflow_off + QID_OVERFLOW_SIZE * self.qid_overflow)


def _align(n: int, a: int = 4096) -> int:
    return (n + a - 1) & ~(a - 1)


def put_str(buf: memoryview, off: int, value: bytes, cap: int, wide: bool = False) -> None:
    """Length-prefixed bytes (u8, or u16 when wide) in a field of `cap` bytes."""
    n = len(value)
    hdr = 2 if wide else 1
    if n > cap - hdr:
        raise ValueError(f"{n} bytes do not fit a {cap}-byte field")
    if wide:
        struct.pack_into("<H", buf, off, n)
    else:
        buf[off] = n
    buf[off + hdr:off + hdr + n] = value


def get_str(buf: memoryview, off: int, wide: bool = False) -> bytes:
    if wide:
        n = struct.unpack_from("<H", buf, off)[0]
        return bytes(buf[off + 2:off + 2 + n])
    n = buf[off]
    return bytes(buf[off + 1:off + 1 + n])
