"""Every 9P2000.L and 9P2000.u message as one frozen type; fields declared once, one registry.

Tcreate has the .u layout (with `extension`) in both dialects: Unikraft sends it in .L sessions.

A frame is size[4] type[1] tag[2] body, little-endian. `decode` takes exactly
one complete frame and raises only DecodeError; `encode` returns the frame.
"""
from __future__ import annotations

import errno
import operator
import struct
from dataclasses import dataclass, fields as dc_fields
from typing import ClassVar

from ..errors import DecodeError, Xen9pError
from .stat import STATN, StatRecord
from .wire import DATA, QID, QIDARRAY, STR, STRARRAY, U8, U16, U32, U64, Fixed, Qid, Var

HEADER = struct.Struct("<IBH")
HEADER_SIZE = HEADER.size  # 7
NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
IOHDRSZ = 24  # Twrite/Rread header room subtracted from msize for iounit
# The default largest msize granted: a 512 KiB payload (the Linux frontend's transport maximum) and its header.
MSIZE_CAP = 512 * 1024 + IOHDRSZ


class EncodeError(Xen9pError, ValueError):
    """A message field does not fit its wire type (a bug in the caller, not the peer)."""


class Message:
    """Base of every message; `tag` is the first field of all of them."""

    TYPE: ClassVar[int]
    FIELDS: ClassVar[tuple]
    _plan: ClassVar[tuple]
    __slots__ = ()

    def __repr__(self) -> str:
        parts = []
        for name, _ in self.FIELDS:
            v = getattr(self, name)
            if isinstance(v, (bytes, bytearray, memoryview)):
                v = f"<{len(v)} bytes>"
            elif isinstance(v, str) and len(v) > 64:
                v = repr(v[:61] + "...")
            else:
                v = repr(v)
            parts.append(f"{name}={v}")
        return f"{type(self).__name__}(tag={self.tag}, {', '.join(parts)})"


def _compile(fields: tuple) -> tuple:
    """Group runs of fixed-size fields into one struct each; variable fields stand alone.

    A fixed step is ("fixed", struct, field types, simple, getter, spans): `getter` fetches
    all of the run's values at once (operator.attrgetter, in C); `simple` means no field
    spans several struct values, else `spans` lists the qid positions to splice flat.
    """
    plan: list = []
    run: list[tuple[str, Fixed]] = []

    def flush() -> None:
        if run:
            fmt = "<" + "".join(f.fmt for _, f in run)
            # Positions of multi-value fields (qids), last first, so splicing keeps indexes valid.
            spans = tuple(i for i in reversed(range(len(run))) if run[i][1].nvals != 1)
            simple = not spans
            names = [n for n, _ in run]
            getter = operator.attrgetter(*names)
            if len(names) == 1:  # attrgetter of one name returns the value, not a 1-tuple
                one = getter
                getter = lambda m, one=one: (one(m),)  # noqa: E731
            plan.append(("fixed", struct.Struct(fmt), tuple(f for _, f in run), simple, getter, spans))
            run.clear()

    for name, ftype in fields:
        if isinstance(ftype, Fixed):
            run.append((name, ftype))
        else:
            flush()
            plan.append(("var", ftype, name))
    flush()
    return tuple(plan)


def _decode_body(cls, buf, off: int, tag: int):
    vals: list = [tag]
    end = len(buf)
    for step in cls._plan:
        if step[0] == "fixed":
            S = step[1]
            if off + S.size > end:
                raise DecodeError(f"{cls.__name__} truncated")
            t = S.unpack_from(buf, off)
            off += S.size
            if step[3]:
                vals.extend(t)
            else:
                i = 0
                for f in step[2]:
                    vals.append(f.from_vals(t[i:i + f.nvals]))
                    i += f.nvals
        else:
            v, off = step[1].decode(buf, off)
            vals.append(v)
    if off != end:
        raise DecodeError(f"{cls.__name__}: {end - off} bytes after the last field")
    return cls(*vals)


def _encode_body(msg, out: bytearray) -> None:
    for step in msg._plan:
        if step[0] == "fixed":
            vals = step[4](msg)
            if not step[3]:
                vals = list(vals)
                for i in step[5]:
                    vals[i:i + 1] = vals[i]
            out += step[1].pack(*vals)
        else:
            step[1].encode(getattr(msg, step[2]), out)


def message(type_: int, *fields: tuple):
    """Class decorator: declare the wire type and fields, make a frozen slotted dataclass."""

    def wrap(cls):
        cls.TYPE = type_
        cls.FIELDS = fields
        cls._plan = _compile(fields)
        ann = {"tag": int}
        for name, ftype in fields:
            ann[name] = object
        cls.__annotations__ = ann
        return dataclass(frozen=True, slots=True, repr=False, eq=True)(cls)

    return wrap


# --- the messages, in the order of the type numbers -------------------------

@message(7, ("ecode", U32))
class Rlerror(Message): pass

@message(8, ("fid", U32))
class Tstatfs(Message): pass

@message(9, ("type", U32), ("bsize", U32), ("blocks", U64), ("bfree", U64), ("bavail", U64),
         ("files", U64), ("ffree", U64), ("fsid", U64), ("namelen", U32))
class Rstatfs(Message): pass

@message(12, ("fid", U32), ("flags", U32))
class Tlopen(Message): pass

@message(13, ("qid", QID), ("iounit", U32))
class Rlopen(Message): pass

@message(14, ("fid", U32), ("name", STR), ("flags", U32), ("mode", U32), ("gid", U32))
class Tlcreate(Message): pass

@message(15, ("qid", QID), ("iounit", U32))
class Rlcreate(Message): pass

@message(16, ("fid", U32), ("name", STR), ("symtgt", STR), ("gid", U32))
class Tsymlink(Message): pass

@message(17, ("qid", QID))
class Rsymlink(Message): pass

@message(18, ("dfid", U32), ("name", STR), ("mode", U32), ("major", U32), ("minor", U32), ("gid", U32))
class Tmknod(Message): pass

@message(19, ("qid", QID))
class Rmknod(Message): pass

@message(20, ("fid", U32), ("dfid", U32), ("name", STR))
class Trename(Message): pass

@message(21)
class Rrename(Message): pass

@message(22, ("fid", U32))
class Treadlink(Message): pass

@message(23, ("target", STR))
class Rreadlink(Message): pass

@message(24, ("fid", U32), ("request_mask", U64))
class Tgetattr(Message): pass

@message(25, ("valid", U64), ("qid", QID), ("mode", U32), ("uid", U32), ("gid", U32), ("nlink", U64),
         ("rdev", U64), ("size", U64), ("blksize", U64), ("blocks", U64),
         ("atime_sec", U64), ("atime_nsec", U64), ("mtime_sec", U64), ("mtime_nsec", U64),
         ("ctime_sec", U64), ("ctime_nsec", U64), ("btime_sec", U64), ("btime_nsec", U64),
         ("gen", U64), ("data_version", U64))
class Rgetattr(Message): pass

@message(26, ("fid", U32), ("valid", U32), ("mode", U32), ("uid", U32), ("gid", U32), ("size", U64),
         ("atime_sec", U64), ("atime_nsec", U64), ("mtime_sec", U64), ("mtime_nsec", U64))
class Tsetattr(Message): pass

@message(27)
class Rsetattr(Message): pass

@message(30, ("fid", U32), ("newfid", U32), ("name", STR))
class Txattrwalk(Message): pass

@message(31, ("size", U64))
class Rxattrwalk(Message): pass

@message(32, ("fid", U32), ("name", STR), ("attr_size", U64), ("flags", U32))
class Txattrcreate(Message): pass

@message(33)
class Rxattrcreate(Message): pass

@message(40, ("fid", U32), ("offset", U64), ("count", U32))
class Treaddir(Message): pass

@message(41, ("data", DATA))
class Rreaddir(Message): pass

@message(50, ("fid", U32), ("datasync", U32))
class Tfsync(Message): pass

@message(51)
class Rfsync(Message): pass

@message(52, ("fid", U32), ("type", U8), ("flags", U32), ("start", U64), ("length", U64),
         ("proc_id", U32), ("client_id", STR))
class Tlock(Message): pass

@message(53, ("status", U8))
class Rlock(Message): pass

@message(54, ("fid", U32), ("type", U8), ("start", U64), ("length", U64), ("proc_id", U32),
         ("client_id", STR))
class Tgetlock(Message): pass

@message(55, ("type", U8), ("start", U64), ("length", U64), ("proc_id", U32), ("client_id", STR))
class Rgetlock(Message): pass

@message(70, ("dfid", U32), ("fid", U32), ("name", STR))
class Tlink(Message): pass

@message(71)
class Rlink(Message): pass

@message(72, ("dfid", U32), ("name", STR), ("mode", U32), ("gid", U32))
class Tmkdir(Message): pass

@message(73, ("qid", QID))
class Rmkdir(Message): pass

@message(74, ("olddirfid", U32), ("oldname", STR), ("newdirfid", U32), ("newname", STR))
class Trenameat(Message): pass

@message(75)
class Rrenameat(Message): pass

@message(76, ("dirfid", U32), ("name", STR), ("flags", U32))
class Tunlinkat(Message): pass

@message(77)
class Runlinkat(Message): pass

@message(100, ("msize", U32), ("version", STR))
class Tversion(Message): pass

@message(101, ("msize", U32), ("version", STR))
class Rversion(Message): pass

@message(102, ("afid", U32), ("uname", STR), ("aname", STR), ("n_uname", U32))
class Tauth(Message): pass

@message(103, ("aqid", QID))
class Rauth(Message): pass

@message(104, ("fid", U32), ("afid", U32), ("uname", STR), ("aname", STR), ("n_uname", U32))
class Tattach(Message): pass

@message(105, ("qid", QID))
class Rattach(Message): pass

@message(107, ("ename", STR), ("ecode", U32))
class Rerror(Message): pass

@message(108, ("oldtag", U16))
class Tflush(Message): pass

@message(109)
class Rflush(Message): pass

@message(110, ("fid", U32), ("newfid", U32), ("wnames", STRARRAY))
class Twalk(Message): pass

@message(111, ("wqids", QIDARRAY))
class Rwalk(Message): pass

@message(112, ("fid", U32), ("mode", U8))
class Topen(Message): pass

@message(113, ("qid", QID), ("iounit", U32))
class Ropen(Message): pass

@message(114, ("fid", U32), ("name", STR), ("perm", U32), ("mode", U8), ("extension", STR))
class Tcreate(Message): pass

@message(115, ("qid", QID), ("iounit", U32))
class Rcreate(Message): pass

@message(116, ("fid", U32), ("offset", U64), ("count", U32))
class Tread(Message): pass

@message(117, ("data", DATA))
class Rread(Message): pass

@message(118, ("fid", U32), ("offset", U64), ("data", DATA))
class Twrite(Message): pass

@message(119, ("count", U32))
class Rwrite(Message): pass

@message(120, ("fid", U32))
class Tclunk(Message): pass

@message(121)
class Rclunk(Message): pass

@message(122, ("fid", U32))
class Tremove(Message): pass

@message(123)
class Rremove(Message): pass

@message(124, ("fid", U32))
class Tstat(Message): pass

@message(125, ("stat", STATN))
class Rstat(Message): pass

@message(126, ("fid", U32), ("stat", STATN))
class Twstat(Message): pass

@message(127)
class Rwstat(Message): pass


REGISTRY: tuple[type[Message], ...] = (
    Rlerror, Tstatfs, Rstatfs, Tlopen, Rlopen, Tlcreate, Rlcreate, Tsymlink, Rsymlink,
    Tmknod, Rmknod, Trename, Rrename, Treadlink, Rreadlink, Tgetattr, Rgetattr,
    Tsetattr, Rsetattr, Txattrwalk, Rxattrwalk, Txattrcreate, Rxattrcreate,
    Treaddir, Rreaddir, Tfsync, Rfsync, Tlock, Rlock, Tgetlock, Rgetlock,
    Tlink, Rlink, Tmkdir, Rmkdir, Trenameat, Rrenameat, Tunlinkat, Runlinkat,
    Tversion, Rversion, Tauth, Rauth, Tattach, Rattach, Rerror, Tflush, Rflush,
    Twalk, Rwalk, Topen, Ropen, Tcreate, Rcreate, Tread, Rread, Twrite, Rwrite, Tclunk, Rclunk,
    Tremove, Rremove, Tstat, Rstat, Twstat, Rwstat,
)
BY_TYPE: dict[int, type[Message]] = {cls.TYPE: cls for cls in REGISTRY}


def frame_size(buf) -> int | None:
    """The size field of the frame at the start of buf, or None if fewer than 4 bytes.

    Raises DecodeError if it is below the 7-byte header.
    """
    if len(buf) < 4:
        return None
    (n,) = struct.unpack_from("<I", buf, 0)
    if n < HEADER_SIZE:
        raise DecodeError(f"frame size {n} is below the 7-byte header")
    return n


def peek_header(buf) -> tuple[int, int, int]:
    """(size, type, tag) of a frame; DecodeError if buf is shorter than the header."""
    if len(buf) < HEADER_SIZE:
        raise DecodeError("frame shorter than the 7-byte header")
    return HEADER.unpack_from(buf, 0)


def decode(frame) -> Message:
    """Decode exactly one complete frame. Raises DecodeError (errno EPROTO or EOPNOTSUPP)."""
    size, mtype, tag = peek_header(frame)
    if size != len(frame):
        raise DecodeError(f"frame size field {size} != {len(frame)} bytes given")
    cls = BY_TYPE.get(mtype)
    if cls is None:
        raise DecodeError(f"unknown message type {mtype}", errno.EOPNOTSUPP)
    return _decode_body(cls, frame, HEADER_SIZE, tag)


def encode(msg: Message) -> bytes:
    """The frame of msg; EncodeError if a field does not fit its wire type."""
    out = bytearray(HEADER_SIZE)
    try:
        _encode_body(msg, out)
    except (struct.error, ValueError, TypeError, AttributeError) as e:
        raise EncodeError(f"{type(msg).__name__}: {e}") from None
    HEADER.pack_into(out, 0, len(out), msg.TYPE, msg.tag)
    return bytes(out)


def encode_header(mtype: int, tag: int, size: int) -> bytes:
    """The 7-byte header alone, for replies whose payload is written in place (Rread)."""
    return HEADER.pack(size, mtype, tag)


def error_code(frame) -> int | None:
    """The errno an Rlerror or Rerror frame carries (Rerror's is its last four bytes), else None."""
    if len(frame) < HEADER_SIZE + 4:
        return None
    if frame[4] == Rlerror.TYPE:
        return struct.unpack_from("<I", frame, HEADER_SIZE)[0]
    if frame[4] == Rerror.TYPE:
        return struct.unpack_from("<I", frame, len(frame) - 4)[0]
    return None


def is_request(mtype: int) -> bool:
    return mtype % 2 == 0


def field_names(cls: type[Message]) -> tuple[str, ...]:
    return tuple(f.name for f in dc_fields(cls))


__all__ = [c.__name__ for c in REGISTRY] + [
    "Message", "EncodeError", "REGISTRY", "BY_TYPE", "decode", "encode", "error_code", "encode_header", "frame_size", "peek_header",
    "HEADER", "HEADER_SIZE", "StatRecord", "NOTAG", "NOFID", "IOHDRSZ", "Qid", "is_request", "field_names", "Var",
]
