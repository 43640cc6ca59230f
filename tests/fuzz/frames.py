"""9P frames built from drawn values, for every message type in messages.REGISTRY (any dialect in it).

`lenient_frame` packs fields the way the wire does but without the encoder's limits (17+ walk names,
strings of any bytes), so the server sees what a hostile guest can send. Field values come from the
field's declared wire type; names steer fids, tags and names toward the values that hurt.
"""
from __future__ import annotations

import struct

from xen9p_common.p9 import messages as M
from xen9p_common.p9 import wire as W

from .draw import Draw

REQUESTS = tuple(cls for cls in M.REGISTRY if M.is_request(cls.TYPE))

# Names a guest walks, creates and renames: traversal, separators, NUL, every byte value, the
# symlinks and special files the sandbox plants in the export, and over-long ones.
NAMES = ("..", ".", "", "a", "d", "f", "new", "up", "abs", "dirup", "fifo", "sock", "../outside", "a/b",
         "/", "\x00", "x\x00y", "..\x00", "\udcff\udcfe", "\u00e9t\u00e9", "n" * 255, "n" * 256, "n" * 4096)
FID_FIELDS = {"fid", "newfid", "dfid", "afid", "olddirfid", "newdirfid", "dirfid"}


def draw_name(d: Draw) -> str:
    if d.chance(200):
        return d.pick(NAMES)
    # Any bytes at all (surrogate-escaped like the codec does with what is not UTF-8).
    return d.blob(300).decode("utf-8", "surrogateescape")


def draw_fid(d: Draw, fids: tuple[int, ...]) -> int:
    return d.pick(fids) if d.chance(224) else d.int_of(4)


def _pack_str(s: str, out: bytearray) -> None:
    raw = s.encode("utf-8", "surrogateescape")[:0xFFFF]
    out += struct.pack("<H", len(raw)) + raw


def field_value(d: Draw, name: str, ftype, fids: tuple[int, ...], tags: list[int]):
    """A value for one field, from its wire type (unknown Var types get raw bytes)."""
    if name in FID_FIELDS:
        return draw_fid(d, fids)
    if name == "oldtag":
        return d.pick(tags) if tags and d.chance(200) else d.uint(2)
    if ftype is W.QID:
        return W.Qid(d.uint(1), d.uint(4), d.uint(8))
    if isinstance(ftype, W.Fixed):
        return d.int_of(struct.calcsize("<" + ftype.fmt))
    if ftype is W.STR:
        return draw_name(d) if d.chance(220) else d.pick(("9P2000.L", "9P2000.u", "9P2000", "root", ""))
    if ftype is W.STRARRAY:
        n = d.pick((0, 1, 2, 3, 16, 17, 40)) if d.flag() else d.below(20)
        return tuple(draw_name(d) for _ in range(n))
    if ftype is W.DATA:
        return d.pick((b"", b"x", b"\0" * 4096)) if d.flag() else d.blob(9000)
    if ftype is W.QIDARRAY:
        return tuple(W.Qid(d.uint(1), d.uint(4), d.uint(8)) for _ in range(d.below(20)))
    return d.blob(64)  # a field type this module does not know yet: raw bytes


KNOWN_TYPES = (W.STR, W.STRARRAY, W.DATA, W.QIDARRAY)


def known_fields(cls) -> bool:
    """Whether every field of cls has a wire type this module draws faithfully (not raw bytes)."""
    return all(isinstance(t, W.Fixed) or t in KNOWN_TYPES for _, t in cls.FIELDS)


def lenient_frame(cls, tag: int, values: list) -> bytes:
    """The frame of cls with these field values, packed without the encoder's limits."""
    out = bytearray(M.HEADER_SIZE)
    for (name, ftype), v in zip(cls.FIELDS, values):
        if ftype is W.QID:
            out += struct.pack("<BIQ", *v)
        elif isinstance(ftype, W.Fixed):
            out += struct.pack("<" + ftype.fmt, v)
        elif ftype is W.STR:
            _pack_str(v, out)
        elif ftype is W.STRARRAY:
            out += struct.pack("<H", len(v))
            for s in v:
                _pack_str(s, out)
        elif ftype is W.DATA:
            out += struct.pack("<I", len(v)) + v
        elif ftype is W.QIDARRAY:
            out += struct.pack("<H", len(v))
            for q in v:
                out += struct.pack("<BIQ", *q)
        else:
            out += struct.pack("<H", len(v)) + v
    M.HEADER.pack_into(out, 0, len(out), cls.TYPE, tag)
    return bytes(out)


def draw_message(d: Draw, classes, tag: int, fids: tuple[int, ...], tags: list[int]):
    """(class, field values, frame) of one drawn message."""
    cls = d.pick(classes)
    values = [field_value(d, name, ftype, fids, tags) for name, ftype in cls.FIELDS]
    return cls, values, lenient_frame(cls, tag, values)


def mangle(d: Draw, frame: bytes) -> bytes:
    """Sometimes break a good frame: truncate it, lie in its size, flip bytes, append junk."""
    how = d.below(8)
    if how == 0:
        return frame[:d.below(len(frame) + 1)]
    if how == 1:
        return struct.pack("<I", d.int_of(4)) + frame[4:]
    if how == 2 and len(frame) > 7:
        b = bytearray(frame)
        for _ in range(1 + d.below(4)):
            b[d.below(len(b))] = d.uint(1)
        return bytes(b)
    if how == 3:
        junk = d.blob(16)
        return struct.pack("<I", len(frame) + len(junk)) + frame[4:] + junk
    return frame
