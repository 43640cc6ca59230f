"""The 9P2000.u stat record (Rstat, Twstat, directory reads of a .u session).

size[2] type[2] dev[4] qid[13] mode[4] atime[4] mtime[4] length[8]
name[s] uid[s] gid[s] muid[s] extension[s] n_uid[4] n_gid[4] n_muid[4]

`size` counts the bytes after itself: 61 + the five strings' lengths. Rstat and
Twstat carry the record behind one more n[2] (= size + 2): the STATN field type.
A record is decoded strictly: its size must match what its fields span.
"""
from __future__ import annotations

import struct
from typing import Iterator, NamedTuple

from ..errors import DecodeError
from .wire import U16S, Qid, Var, _decode_str, _encode_str

_HEAD = struct.Struct("<HHIBIQIIIQ")  # size type dev qid(type version path) mode atime mtime length
_TAIL = struct.Struct("<III")        # n_uid n_gid n_muid
STAT_FIXED = _HEAD.size - 2 + 5 * 2 + _TAIL.size  # 61: what `size` counts besides the strings' bytes
DONT_TOUCH_U16 = 0xFFFF
DONT_TOUCH_U32 = 0xFFFFFFFF
DONT_TOUCH_U64 = 0xFFFFFFFFFFFFFFFF


class StatRecord(NamedTuple):
    type: int
    dev: int
    qid: Qid
    mode: int
    atime: int
    mtime: int
    length: int
    name: str
    uid: str
    gid: str
    muid: str
    extension: str
    n_uid: int
    n_gid: int
    n_muid: int


# Twstat's "don't touch" record: every integer all ones, every string empty.
STAT_DONT_TOUCH = StatRecord(DONT_TOUCH_U16, DONT_TOUCH_U32, Qid(0xFF, DONT_TOUCH_U32, DONT_TOUCH_U64),
                             DONT_TOUCH_U32, DONT_TOUCH_U32, DONT_TOUCH_U32, DONT_TOUCH_U64,
                             "", "", "", "", "", DONT_TOUCH_U32, DONT_TOUCH_U32, DONT_TOUCH_U32)


def pack_stat(st: StatRecord, out: bytearray | None = None) -> bytearray:
    """Append the record (size[2] first) to out; returns out."""
    if out is None:
        out = bytearray()
    start = len(out)
    out += _HEAD.pack(0, st.type, st.dev, st.qid[0], st.qid[1], st.qid[2], st.mode, st.atime, st.mtime,
                      st.length)
    for s in (st.name, st.uid, st.gid, st.muid, st.extension):
        _encode_str(s, out)
    out += _TAIL.pack(st.n_uid, st.n_gid, st.n_muid)
    size = len(out) - start - 2
    if size > 0xFFFF:
        raise ValueError("stat record longer than 65535 bytes")
    U16S.pack_into(out, start, size)
    return out


def stat_size(st: StatRecord) -> int:
    """Bytes pack_stat appends (size field included)."""
    return len(pack_stat(st))


def unpack_stat(buf, off: int = 0) -> tuple[StatRecord, int]:
    """The record at off and the offset after it; DecodeError if short or inconsistent."""
    end = len(buf)
    if off + _HEAD.size > end:
        raise DecodeError("stat record shorter than its fixed part")
    size, typ, dev, qt, qv, qp, mode, atime, mtime, length = _HEAD.unpack_from(buf, off)
    rec_end = off + 2 + size
    if rec_end > end:
        raise DecodeError("stat record size past end of data")
    view = memoryview(buf)[:rec_end]
    pos = off + _HEAD.size
    strs = []
    for _ in range(5):
        s, pos = _decode_str(view, pos)
        strs.append(s)
    if pos + _TAIL.size != rec_end:
        raise DecodeError("stat record size does not match its fields")
    n_uid, n_gid, n_muid = _TAIL.unpack_from(buf, pos)
    return StatRecord(typ, dev, Qid(qt, qv, qp), mode, atime, mtime, length, *strs, n_uid, n_gid, n_muid), rec_end


def unpack_stats(data) -> Iterator[StatRecord]:
    """Every record of a .u directory read (whole records back to back)."""
    off = 0
    while off < len(data):
        st, off = unpack_stat(data, off)
        yield st


class _StatN(Var):
    """n[2] + one stat record whose own size is n - 2 (Rstat, Twstat)."""

    name = "Stat"

    def decode(self, buf, off):
        if off + 2 > len(buf):
            raise DecodeError("stat length past end of frame")
        (n,) = U16S.unpack_from(buf, off)
        off += 2
        if off + n > len(buf):
            raise DecodeError("stat past end of frame")
        st, end = unpack_stat(memoryview(buf)[:off + n], off)
        if end != off + n:
            raise DecodeError("stat length does not match the record")
        return st, end

    def encode(self, value, out):
        rec = pack_stat(value)
        out += U16S.pack(len(rec))
        out += rec

    def check(self, value):
        return isinstance(value, StatRecord)


STATN = _StatN()
