"""Wire field types of 9P2000.L: fixed-size integers and qids, strings, arrays, data.

A message declares its fields once with these types; `messages` compiles the
declarations into decode/encode plans that batch runs of fixed-size fields
into one precompiled struct.
"""
from __future__ import annotations

import errno
import struct
from typing import NamedTuple

from ..errors import DecodeError

U16S = struct.Struct("<H")
U32S = struct.Struct("<I")

MAXWELEM = 16


class Qid(NamedTuple):
    type: int
    version: int
    path: int


QID_ZERO = Qid(0, 0, 0)


class Fixed:
    """A fixed-size field: `fmt` is its struct format, `nvals` how many values it spans."""

    def __init__(self, name: str, fmt: str) -> None:
        self.name = name
        self.fmt = fmt
        self.nvals = len(fmt)

    def to_vals(self, value):
        return (value,)

    def from_vals(self, vals):
        return vals[0]

    def check(self, value) -> bool:
        return isinstance(value, int)


class _QidType(Fixed):
    def __init__(self) -> None:
        super().__init__("Qid", "BIQ")

    def to_vals(self, value):
        return value

    def from_vals(self, vals):
        return Qid._make(vals)

    def check(self, value) -> bool:
        return isinstance(value, tuple) and len(value) == 3


U8 = Fixed("U8", "B")
U16 = Fixed("U16", "H")
U32 = Fixed("U32", "I")
U64 = Fixed("U64", "Q")
QID = _QidType()


def _decode_str(buf, off: int) -> tuple[str, int]:
    if off + 2 > len(buf):
        raise DecodeError("string length past end of frame")
    (n,) = U16S.unpack_from(buf, off)
    off += 2
    end = off + n
    if end > len(buf):
        raise DecodeError("string past end of frame")
    return bytes(buf[off:end]).decode("utf-8", "surrogateescape"), end


def _encode_str(value: str, out: bytearray) -> None:
    raw = value.encode("utf-8", "surrogateescape")
    if len(raw) > 0xFFFF:
        raise ValueError("9P string longer than 65535 bytes")
    out += U16S.pack(len(raw))
    out += raw


class Var:
    """A variable-size field with its own decode/encode."""

    name = "Var"

    def decode(self, buf, off: int):
        raise NotImplementedError

    def encode(self, value, out: bytearray) -> None:
        raise NotImplementedError

    def check(self, value) -> bool:
        raise NotImplementedError


class _Str(Var):
    """u16 length + UTF-8 bytes; undecodable bytes survive as surrogate escapes."""

    name = "Str"

    def decode(self, buf, off):
        return _decode_str(buf, off)

    def encode(self, value, out):
        _encode_str(value, out)

    def check(self, value):
        return isinstance(value, str)


class _Data(Var):
    """u32 count + that many bytes (Rread, Twrite, Rreaddir). Decodes as a zero-copy view."""

    name = "Data"

    def decode(self, buf, off):
        if off + 4 > len(buf):
            raise DecodeError("data count past end of frame")
        (n,) = U32S.unpack_from(buf, off)
        off += 4
        end = off + n
        if end > len(buf):
            raise DecodeError("data past end of frame")
        return memoryview(buf)[off:end], end

    def encode(self, value, out):
        out += U32S.pack(len(value))
        out += value

    def check(self, value):
        return isinstance(value, (bytes, bytearray, memoryview))


class _StrArray(Var):
    """u16 count + strings (Twalk wnames), at most MAXWELEM."""

    name = "StrArray"

    def decode(self, buf, off):
        if off + 2 > len(buf):
            raise DecodeError("array count past end of frame")
        (n,) = U16S.unpack_from(buf, off)
        if n > MAXWELEM:
            raise DecodeError(f"{n} names in one walk (max {MAXWELEM})")
        off += 2
        names = []
        for _ in range(n):
            s, off = _decode_str(buf, off)
            names.append(s)
        return tuple(names), off

    def encode(self, value, out):
        if len(value) > MAXWELEM:
            raise ValueError(f"at most {MAXWELEM} names per walk")
        out += U16S.pack(len(value))
        for s in value:
            _encode_str(s, out)

    def check(self, value):
        return isinstance(value, tuple) and len(value) <= MAXWELEM and all(isinstance(s, str) for s in value)


_QIDS = struct.Struct("<BIQ")


class _QidArray(Var):
    """u16 count + qids (Rwalk wqids), at most MAXWELEM."""

    name = "QidArray"

    def decode(self, buf, off):
        if off + 2 > len(buf):
            raise DecodeError("array count past end of frame")
        (n,) = U16S.unpack_from(buf, off)
        if n > MAXWELEM:
            raise DecodeError(f"{n} qids in one walk reply (max {MAXWELEM})")
        off += 2
        if off + 13 * n > len(buf):
            raise DecodeError("qids past end of frame")
        qids = tuple(Qid._make(_QIDS.unpack_from(buf, off + 13 * i)) for i in range(n))
        return qids, off + 13 * n

    def encode(self, value, out):
        if len(value) > MAXWELEM:
            raise ValueError(f"at most {MAXWELEM} qids per walk")
        out += U16S.pack(len(value))
        for q in value:
            out += _QIDS.pack(*q)

    def check(self, value):
        return isinstance(value, tuple) and len(value) <= MAXWELEM and all(QID.check(q) for q in value)


STR = _Str()
DATA = _Data()
STRARRAY = _StrArray()
QIDARRAY = _QidArray()

__all__ = ["Qid", "QID_ZERO", "U8", "U16", "U32", "U64", "QID", "STR", "DATA", "STRARRAY", "QIDARRAY",
           "MAXWELEM", "Fixed", "Var", "errno"]
