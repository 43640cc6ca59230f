"""Treaddir entries: qid[13] offset[8] type[1] name[s]; cost 24 + len(name) bytes each."""
from __future__ import annotations

import struct
from typing import Iterator, NamedTuple

from ..errors import DecodeError
from .wire import Qid

_ENT = struct.Struct("<BIQQBH")  # qid(type, version, path), offset, type, name length
DIRENT_OVERHEAD = _ENT.size  # 24


class Dirent(NamedTuple):
    qid: Qid
    offset: int
    type: int
    name: str


def dirent_size(name_bytes: bytes) -> int:
    return DIRENT_OVERHEAD + len(name_bytes)


def pack_dirent(out: bytearray, qid: Qid, offset: int, dtype: int, name: bytes) -> None:
    out += _ENT.pack(qid[0], qid[1], qid[2], offset, dtype, len(name))
    out += name


def unpack_dirents(data) -> Iterator[Dirent]:
    off = 0
    n = len(data)
    while off < n:
        if off + DIRENT_OVERHEAD > n:
            raise DecodeError("truncated directory entry")
        qt, qv, qp, offset, dtype, nlen = _ENT.unpack_from(data, off)
        off += DIRENT_OVERHEAD
        if off + nlen > n:
            raise DecodeError("directory entry name past end of data")
        name = bytes(data[off:off + nlen]).decode("utf-8", "surrogateescape")
        off += nlen
        yield Dirent(Qid(qt, qv, qp), offset, dtype, name)
