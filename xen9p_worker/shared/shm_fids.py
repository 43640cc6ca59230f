"""The device-wide fid table in shared memory: FidTable over fixed slots and an open-addressed index.

Writers hold the device mutex; readers are lock-free (per-slot sequence numbers + a per-process cache).
"""
from __future__ import annotations

import errno
import pickle
import struct

from ..fids import FID_DIR, FID_FILE, FidEntry, FidTable
from . import layout as L
from .mutex import ShmMutex

_OPEN_KINDS = (FID_FILE, FID_DIR)
_U32, _U64 = L.U32, L.U64
_BUCKET = struct.Struct("<II")  # fid, slot + 1 (0 = empty)

# Fid slot: seq u64 | fid u32 | used u8 | kind u8 | pad u16 | blob i32 | pad u32 | generation u64
#           | path_len u16 | pad | pickle_len u32 | ... path @48 (4096) | pickle @4144
_SLOT_HDR = struct.Struct("<QIBBHiIQHHI")
S_SEQ, S_FID, S_USED = 0, 8, 12
S_PATH = 48
S_PICKLE = S_PATH + L.FID_PATH_MAX
PICKLE_MAX = L.FID_SLOT_SIZE - S_PICKLE


class ShmFidTable(FidTable):
    """fids.FidTable over a DeviceState segment; every worker of the device sees one table.

    Paths live raw in the slot (rename rewrites them without decoding), xattr values in a
    few 64 KiB blobs, the rest of FidEntry pickled. Refusals: EMFILE at max_fids, ENOSPC
    when every xattr blob is taken, ENAMETOOLONG for a path over 4096 bytes.
    """

    def __init__(self, buf: memoryview, lay: L.Layout, mutex: ShmMutex) -> None:
        self._buf = buf
        self._lay = lay
        self.max_fids = lay.max_fids
        self._mu = mutex
        self._mask = lay.buckets - 1
        self._boff = lay.buckets_off
        self._soff = lay.slots_off
        self._cache: dict[int, tuple[int, int, FidEntry]] = {}

    # -- reads ------------------------------------------------------------------------

    def _slot_off(self, idx: int) -> int:
        return self._soff + idx * L.FID_SLOT_SIZE

    def _find(self, fid: int) -> int:
        """Slot index of fid, or -1 (caller guards with the seqlock or the mutex)."""
        buf, boff, mask = self._buf, self._boff, self._mask
        h = (fid * 0x9E3779B1) & mask
        for _ in range(mask + 1):
            f, s = _BUCKET.unpack_from(buf, boff + 8 * h)
            if s == 0:
                return -1
            if f == fid:
                return s - 1
            h = (h + 1) & mask
        return -1

    def _read_slot(self, idx: int) -> tuple[int, bytes, bytes, int, int] | None:
        off = self._slot_off(idx)
        seq, fid, used, kind, _, blob, _, gen, plen, _, klen = _SLOT_HDR.unpack_from(self._buf, off)
        if seq & 1 or not used:
            return None
        blob -= 1
        path = bytes(self._buf[off + S_PATH:off + S_PATH + plen])
        pick = bytes(self._buf[off + S_PICKLE:off + S_PICKLE + klen])
        xval = b""
        if blob >= 0:
            boff = self._lay.xattr_off + blob * L.XATTR_BLOB_SIZE
            n = _U32.unpack_from(self._buf, boff + 4)[0]
            xval = bytes(self._buf[boff + 16:boff + 16 + min(n, L.XATTR_MAX)])
        if _U64.unpack_from(self._buf, off)[0] != seq:
            return None
        return seq, path, pick, xval, gen

    def _lookup(self, fid: int):
        idx = self._find(fid)
        if idx < 0:
            return None
        got = self._read_slot(idx)
        if got is None:
            raise _Retry
        return idx, got

    def get(self, fid: int) -> FidEntry:
        c = self._cache.get(fid)
        if c is not None and _U64.unpack_from(self._buf, self._slot_off(c[0]))[0] == c[1]:
            return c[2]
        found = self._mu.read(lambda: self._lookup(fid))
        if found is None:
            self._cache.pop(fid, None)
            raise OSError(errno.ENOENT, f"fid {fid} not in use")
        idx, (seq, path, pick, xval, gen) = found
        e = pickle.loads(pick)
        e.path = path
        e.xattr_value = xval
        e.generation = gen
        self._cache[fid] = (idx, seq, e)
        return e

    def count(self) -> int:
        return _U32.unpack_from(self._buf, L.H_FID_COUNT)[0]

    def count_open(self) -> int:
        return _U32.unpack_from(self._buf, L.H_FID_OPEN)[0]

    def open_files_at(self, path: bytes) -> list[tuple[int, FidEntry]]:
        def scan():
            out = []
            for idx in range(self._hwm()):
                off = self._slot_off(idx)
                if not self._buf[off + S_USED] or self._buf[off + 13] != FID_FILE:
                    continue
                plen = struct.unpack_from("<H", self._buf, off + 32)[0]
                if bytes(self._buf[off + S_PATH:off + S_PATH + plen]) == path:
                    out.append((_U32.unpack_from(self._buf, off + S_FID)[0], self._decode_at(idx)))
            return out
        return self._mu.read(scan)

    def mark_reclaimed(self) -> None:
        self._buf[L.H_FDS_RECLAIMED] = 1

    def reclaimed(self) -> bool:
        return bool(self._buf[L.H_FDS_RECLAIMED])

    def epoch(self) -> int:
        """Moves on every remove/clear: a cue for other processes to drop stale fds."""
        return _U64.unpack_from(self._buf, L.H_FID_EPOCH)[0]

    def snapshot(self) -> dict[int, int]:
        """fid -> generation of every fid in use (for sweeping per-process fd caches)."""
        def scan():
            out = {}
            for idx in range(self._hwm()):
                off = self._slot_off(idx)
                if self._buf[off + S_USED]:
                    out[_U32.unpack_from(self._buf, off + S_FID)[0]] = _U64.unpack_from(self._buf, off + 24)[0]
            return out
        return self._mu.read(scan)

    # -- writes (under the mutex, inside a seqlock write section) ----------------------

    def _encode(self, entry: FidEntry) -> tuple[bytes, bytes, bytes]:
        path, xval = entry.path, entry.xattr_value
        if len(path) > L.FID_PATH_MAX:
            raise OSError(errno.ENAMETOOLONG, "path longer than 4096 bytes")
        if len(xval) > L.XATTR_MAX:
            raise OSError(errno.E2BIG, "xattr value over 64 KiB")
        rest = entry.copy(path=b"", xattr_value=b"")
        pick = pickle.dumps(rest, protocol=5)
        if len(pick) > PICKLE_MAX:
            raise OSError(errno.ENAMETOOLONG, "fid entry too large for a slot")
        return path, xval, pick

    def _write_slot(self, idx: int, fid: int, entry: FidEntry, path: bytes, pick: bytes,
                    blob: int) -> None:
        off = self._slot_off(idx)
        buf = self._buf
        seq = _U64.unpack_from(buf, off)[0] | 1
        _U64.pack_into(buf, off, seq)  # odd: readers of this slot retry
        buf[off + S_PATH:off + S_PATH + len(path)] = path
        buf[off + S_PICKLE:off + S_PICKLE + len(pick)] = pick
        _SLOT_HDR.pack_into(buf, off, seq, fid, 1, entry.kind, 0, blob + 1, 0, entry.generation,
                            len(path), 0, len(pick))
        _U64.pack_into(buf, off, seq + 1)
        # The writer's own later reads of this fid (the clunk after a walk, the write after a
        # create) need not decode what it just encoded: cached under the slot's new sequence.
        self._cache[fid] = (idx, seq + 1, entry)

    def _blob_of(self, idx: int) -> int:
        # Stored as blob + 1 so a never-touched (zero) slot has none.
        return struct.unpack_from("<i", self._buf, self._slot_off(idx) + 16)[0] - 1

    def _put_blob(self, idx: int, blob: int, xval: bytes) -> int:
        """Store xval for slot idx, reusing `blob` or taking a free one; returns the blob or -1."""
        if not xval:
            if blob >= 0:
                self._free_blob(blob)
            return -1
        if blob < 0:
            for b in range(self._lay.xattr_slots):
                boff = self._lay.xattr_off + b * L.XATTR_BLOB_SIZE
                if _U32.unpack_from(self._buf, boff)[0] == 0:
                    blob = b
                    break
            else:
                raise OSError(errno.ENOSPC, "every xattr buffer of the device is in use")
        boff = self._lay.xattr_off + blob * L.XATTR_BLOB_SIZE
        _U32.pack_into(self._buf, boff, idx + 1)
        _U32.pack_into(self._buf, boff + 4, len(xval))
        self._buf[boff + 16:boff + 16 + len(xval)] = xval
        return blob

    def _free_blob(self, blob: int) -> None:
        _U32.pack_into(self._buf, self._lay.xattr_off + blob * L.XATTR_BLOB_SIZE, 0)

    def _bucket_insert(self, fid: int, idx: int) -> None:
        h = (fid * 0x9E3779B1) & self._mask
        while _BUCKET.unpack_from(self._buf, self._boff + 8 * h)[1]:
            h = (h + 1) & self._mask
        _BUCKET.pack_into(self._buf, self._boff + 8 * h, fid, idx + 1)

    def _bucket_delete(self, fid: int) -> None:
        # Backward-shift deletion keeps linear probing correct without tombstones.
        buf, boff, mask = self._buf, self._boff, self._mask
        h = (fid * 0x9E3779B1) & mask
        while True:
            f, s = _BUCKET.unpack_from(buf, boff + 8 * h)
            if s == 0:
                return
            if f == fid:
                break
            h = (h + 1) & mask
        j = h
        while True:
            j = (j + 1) & mask
            f, s = _BUCKET.unpack_from(buf, boff + 8 * j)
            if s == 0:
                break
            home = (f * 0x9E3779B1) & mask
            # Move j into the hole at h unless its home lies cyclically in (h, j].
            if (j > h and (home <= h or home > j)) or (j < h and (home <= h and home > j)):
                _BUCKET.pack_into(buf, boff + 8 * h, f, s)
                h = j
        _BUCKET.pack_into(buf, boff + 8 * h, 0, 0)

    def _hwm(self) -> int:
        """Slots below this index have been used at some time; the rest are untouched pages."""
        return _U32.unpack_from(self._buf, L.H_FID_HWM)[0]

    def _pop_free(self) -> int:
        top = _U32.unpack_from(self._buf, L.H_FREE_TOP)[0]
        if top == 0:
            hwm = self._hwm()
            _U32.pack_into(self._buf, L.H_FID_HWM, hwm + 1)
            return hwm
        top -= 1
        _U32.pack_into(self._buf, L.H_FREE_TOP, top)
        return _U32.unpack_from(self._buf, self._lay.free_off + 4 * top)[0]

    def _push_free(self, idx: int) -> None:
        top = _U32.unpack_from(self._buf, L.H_FREE_TOP)[0]
        _U32.pack_into(self._buf, self._lay.free_off + 4 * top, idx)
        _U32.pack_into(self._buf, L.H_FREE_TOP, top + 1)

    def _bump(self, off: int, delta: int) -> None:
        _U32.pack_into(self._buf, off, (_U32.unpack_from(self._buf, off)[0] + delta) & 0xFFFFFFFF)

    def _bump_epoch(self) -> None:
        _U64.pack_into(self._buf, L.H_FID_EPOCH, _U64.unpack_from(self._buf, L.H_FID_EPOCH)[0] + 1)

    def _release_slot(self, idx: int) -> None:
        off = self._slot_off(idx)
        blob = self._blob_of(idx)
        if blob >= 0:
            self._free_blob(blob)
        seq = _U64.unpack_from(self._buf, off)[0]
        _U64.pack_into(self._buf, off, seq | 1)
        self._buf[off + S_USED] = 0
        struct.pack_into("<i", self._buf, off + 16, 0)
        _U64.pack_into(self._buf, off, (seq | 1) + 1)
        self._push_free(idx)

    def _decode_at(self, idx: int) -> FidEntry:
        got = self._read_slot(idx)
        assert got is not None
        _, path, pick, xval, gen = got
        e = pickle.loads(pick)
        e.path, e.xattr_value, e.generation = path, xval, gen
        return e

    def add(self, fid: int, entry: FidEntry) -> FidEntry:
        path, xval, pick = self._encode(entry)
        with self._mu:
            if self._find(fid) >= 0:
                raise OSError(errno.EEXIST, f"fid {fid} already in use")
            if self.count() >= self.max_fids:
                raise OSError(errno.EMFILE, f"fid limit {self.max_fids} reached")
            self._mu.write_begin()
            try:
                idx = self._pop_free()
                gen = _U64.unpack_from(self._buf, L.H_FID_NEXTGEN)[0] + 1
                _U64.pack_into(self._buf, L.H_FID_NEXTGEN, gen)
                entry.generation = gen
                try:
                    blob = self._put_blob(idx, -1, xval)
                except OSError:
                    self._push_free(idx)
                    raise
                self._write_slot(idx, fid, entry, path, pick, blob)
                self._bucket_insert(fid, idx)
                self._bump(L.H_FID_COUNT, 1)
                if entry.kind in _OPEN_KINDS:
                    self._bump(L.H_FID_OPEN, 1)
            finally:
                self._mu.write_end()
        return entry

    def update(self, fid: int, entry: FidEntry) -> None:
        path, xval, pick = self._encode(entry)
        with self._mu:
            idx = self._find(fid)
            if idx < 0:
                raise OSError(errno.ENOENT, f"fid {fid} not in use")
            self._mu.write_begin()
            try:
                off = self._slot_off(idx)
                old_kind = self._buf[off + 13]
                entry.generation = _U64.unpack_from(self._buf, off + 24)[0]
                blob = self._put_blob(idx, self._blob_of(idx), xval)
                self._write_slot(idx, fid, entry, path, pick, blob)
                d = (entry.kind in _OPEN_KINDS) - (old_kind in _OPEN_KINDS)
                if d:
                    self._bump(L.H_FID_OPEN, d)
            finally:
                self._mu.write_end()

    def remove(self, fid: int) -> FidEntry:
        with self._mu:
            idx = self._find(fid)
            if idx < 0:
                raise OSError(errno.ENOENT, f"fid {fid} not in use")
            e = self._decode_at(idx)
            self._mu.write_begin()
            try:
                self._bucket_delete(fid)
                self._release_slot(idx)
                self._bump(L.H_FID_COUNT, -1)
                if e.kind in _OPEN_KINDS:
                    self._bump(L.H_FID_OPEN, -1)
                self._bump_epoch()
            finally:
                self._mu.write_end()
        self._cache.pop(fid, None)
        return e

    def clear(self) -> list[tuple[int, FidEntry]]:
        out = []
        with self._mu:
            self._mu.write_begin()
            try:
                for idx in range(self._hwm()):
                    off = self._slot_off(idx)
                    if self._buf[off + S_USED]:
                        fid = _U32.unpack_from(self._buf, off + S_FID)[0]
                        out.append((fid, self._decode_at(idx)))
                        self._bucket_delete(fid)
                        self._release_slot(idx)
                _U32.pack_into(self._buf, L.H_FID_COUNT, 0)
                _U32.pack_into(self._buf, L.H_FID_OPEN, 0)
                self._bump_epoch()
            finally:
                self._mu.write_end()
        self._cache.clear()
        return out

    def rename_subtree(self, old_rel: bytes, new_rel: bytes) -> int:
        n = 0
        pre = old_rel + b"/"
        with self._mu:
            self._mu.write_begin()
            try:
                for idx in range(self._hwm()):
                    off = self._slot_off(idx)
                    if not self._buf[off + S_USED]:
                        continue
                    plen = struct.unpack_from("<H", self._buf, off + 32)[0]
                    path = bytes(self._buf[off + S_PATH:off + S_PATH + plen])
                    if path != old_rel and not (old_rel == b"" or path.startswith(pre)):
                        continue
                    new = new_rel + path[len(old_rel):]
                    if len(new) > L.FID_PATH_MAX:
                        continue  # the host refused such a name anyway
                    seq = _U64.unpack_from(self._buf, off)[0] | 1
                    _U64.pack_into(self._buf, off, seq)
                    self._buf[off + S_PATH:off + S_PATH + len(new)] = new
                    struct.pack_into("<H", self._buf, off + 32, len(new))
                    _U64.pack_into(self._buf, off, seq + 1)
                    n += 1
            finally:
                self._mu.write_end()
        return n

    # -- recovery -----------------------------------------------------------------------

    def repair(self) -> None:
        """Rebuild index, free stack and counts from the slots (a writer died mid-update)."""
        buf = self._buf
        buf[self._boff:self._boff + 8 * self._lay.buckets] = bytes(8 * self._lay.buckets)
        _U32.pack_into(buf, L.H_FREE_TOP, 0)
        count = opened = 0
        used_blobs = set()
        for idx in range(self._hwm() - 1, -1, -1):
            off = self._slot_off(idx)
            seq = _U64.unpack_from(buf, off)[0]
            if seq & 1:
                buf[off + S_USED] = 0  # torn: the entry is lost, the slot is reusable
                _U64.pack_into(buf, off, seq + 1)
            fid = _U32.unpack_from(buf, off + S_FID)[0]
            if buf[off + S_USED] and self._find(fid) < 0:
                self._bucket_insert(fid, idx)
                count += 1
                opened += buf[off + 13] in _OPEN_KINDS
                blob = self._blob_of(idx)
                if blob >= 0:
                    used_blobs.add(blob)
            else:
                buf[off + S_USED] = 0
                self._push_free(idx)
        for b in range(self._lay.xattr_slots):
            if b not in used_blobs:
                self._free_blob(b)
        _U32.pack_into(buf, L.H_FID_COUNT, count)
        _U32.pack_into(buf, L.H_FID_OPEN, opened)
        self._bump_epoch()


class _Retry(Exception):
    """A slot changed under a lock-free reader: ShmMutex.read runs the lookup again."""
