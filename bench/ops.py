"""The operations the load generator runs: small state machines over pre-encoded 9P frames.

Each slot (one request in flight) steps through an op: start() gives the first frame, on_reply() the next or None.
"""
from __future__ import annotations

import struct

from xen9p_common.p9 import constants as c
from xen9p_common.p9 import messages as m

_TAG = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_DIRENT_HEAD = struct.Struct("<BIQQBH")
RLERROR = m.Rlerror.TYPE
ROOT_FID = 1


class OpError(Exception):
    """A reply the op did not expect (Rlerror or the wrong type): the measurement is void."""


def with_tag(frame: bytes | bytearray, tag: int) -> bytearray:
    b = bytearray(frame)
    _TAG.pack_into(b, 5, tag)
    return b


def check(reply, want: type[m.Message]) -> None:
    t = reply[4]
    if t != want.TYPE:
        if t == RLERROR:
            raise OpError(f"Rlerror {_U32.unpack_from(reply, 7)[0]} where {want.__name__} was expected")
        raise OpError(f"reply type {t} where {want.__name__} was expected")


class Op:
    """One kind of iteration. `unit` names what `units()` counts (ops, files, entries, bytes)."""

    name = "op"
    unit = "ops"

    def __init__(self, slot: int, fid_base: int, params: dict) -> None:
        self.slot = slot
        self.fid = fid_base
        self.p = params
        self.done_units = 0

    def setup(self) -> list[tuple[bytes, type[m.Message]]]:
        """Requests to send once, in order, before timing (walks, opens)."""
        return []

    def start(self, tag: int) -> bytearray:
        raise NotImplementedError

    def on_reply(self, tag: int, reply: memoryview) -> bytearray | None:
        raise NotImplementedError

    def teardown(self) -> list[tuple[bytes, type[m.Message]]]:
        return [(m.encode(m.Tclunk(0, self.fid)), m.Rclunk)]


def _walk(fid: int, newfid: int, names) -> tuple[bytes, type[m.Message]]:
    return m.encode(m.Twalk(0, fid, newfid, tuple(names))), m.Rwalk


def _unlink(p: dict, dirfid: int, tmpfid: int, name: str) -> list[tuple[bytes, type[m.Message]]]:
    """Tunlinkat, or (p["remove"], for servers without it such as diod) Twalk + Tremove."""
    if p.get("remove"):
        return [(m.encode(m.Twalk(0, dirfid, tmpfid, (name,))), m.Rwalk),
                (m.encode(m.Tremove(0, tmpfid)), m.Rremove)]
    return [(m.encode(m.Tunlinkat(0, dirfid, name, 0)), m.Runlinkat)]


class Getattr(Op):
    """Tgetattr on a walked fid: the cheapest metadata op."""

    name = "Tgetattr"

    def setup(self):
        self._frame = m.encode(m.Tgetattr(0, self.fid, c.GETATTR_BASIC))
        return [_walk(ROOT_FID, self.fid, self.p["file"].split("/"))]

    def start(self, tag):
        return with_tag(self._frame, tag)

    def on_reply(self, tag, reply):
        check(reply, m.Rgetattr)
        self.done_units += 1
        return None


class WalkClunk(Op):
    """Twalk to a file, then Tclunk of the new fid (what a path lookup costs)."""

    name = "Twalk+Tclunk"
    unit = "pairs"

    def setup(self):
        self._walk = m.encode(m.Twalk(0, ROOT_FID, self.fid, tuple(self.p["file"].split("/"))))
        self._clunk = m.encode(m.Tclunk(0, self.fid))
        self._step = 0
        return []

    def start(self, tag):
        self._step = 0
        return with_tag(self._walk, tag)

    def on_reply(self, tag, reply):
        if self._step == 0:
            check(reply, m.Rwalk)
            self._step = 1
            return with_tag(self._clunk, tag)
        check(reply, m.Rclunk)
        self.done_units += 1
        return None

    def teardown(self):
        return []


class CreateWriteUnlink(Op):
    """Twalk (clone the dir fid) + Tlcreate + Twrite 4 KiB + Tclunk + Tunlinkat: one file's life."""

    name = "create+write4K+unlink"
    unit = "files"

    def setup(self):
        dirfid = self.fid + 1
        self._dirfid = dirfid
        name = f"f{self.slot}"
        self._steps = [
            (m.encode(m.Twalk(0, dirfid, self.fid, ())), m.Rwalk),
            (m.encode(m.Tlcreate(0, self.fid, name, c.L_O_RDWR | c.L_O_CREAT | c.L_O_TRUNC, 0o644, 0)), m.Rlcreate),
            (m.encode(m.Twrite(0, self.fid, 0, b"x" * 4096)), m.Rwrite),
            (m.encode(m.Tclunk(0, self.fid)), m.Rclunk),
        ] + _unlink(self.p, dirfid, self.fid, name)
        self._step = 0
        return [_walk(ROOT_FID, dirfid, self.p["dir"].split("/"))]

    def start(self, tag):
        self._step = 0
        return with_tag(self._steps[0][0], tag)

    def on_reply(self, tag, reply):
        check(reply, self._steps[self._step][1])
        self._step += 1
        if self._step == len(self._steps):
            self.done_units += 1
            return None
        return with_tag(self._steps[self._step][0], tag)

    def teardown(self):
        return [(m.encode(m.Tclunk(0, self._dirfid)), m.Rclunk)]


class Readdir(Op):
    """Twalk + Tlopen + Treaddir to the end + Tclunk of a big directory; counts entries."""

    name = "Treaddir"
    unit = "entries"

    def setup(self):
        self._walk = m.encode(m.Twalk(0, ROOT_FID, self.fid, tuple(self.p["dir"].split("/"))))
        self._open = m.encode(m.Tlopen(0, self.fid, c.L_O_RDONLY | c.L_O_DIRECTORY))
        self._clunk = m.encode(m.Tclunk(0, self.fid))
        self._count = self.p["msize"] - 24
        self._step = 0
        return []

    def _readdir(self, tag, offset):
        return bytearray(m.encode(m.Treaddir(tag, self.fid, offset, self._count)))

    def start(self, tag):
        self._step = 0
        return with_tag(self._walk, tag)

    def on_reply(self, tag, reply):
        if self._step == 0:
            check(reply, m.Rwalk)
            self._step = 1
            return with_tag(self._open, tag)
        if self._step == 1:
            check(reply, m.Rlopen)
            self._step = 2
            return self._readdir(tag, 0)
        if self._step == 2:
            check(reply, m.Rreaddir)
            count = _U32.unpack_from(reply, 7)[0]
            if count == 0:
                self._step = 3
                return with_tag(self._clunk, tag)
            # Walk the entries only to find the last offset (the resume cookie).
            off, end, n, last = 11, 11 + count, 0, 0
            while off < end:
                _, _, _, last, _, nlen = _DIRENT_HEAD.unpack_from(reply, off)
                off += 24 + nlen
                n += 1
            self.done_units += n
            return self._readdir(tag, last)
        check(reply, m.Rclunk)
        return None

    def teardown(self):
        return []


class Read(Op):
    """Tread of `size` bytes from an opened, page-cached file, offsets cycling over it."""

    name = "Tread"
    unit = "bytes"

    def setup(self):
        self._size = self.p["size"]
        self._span = max(self.p["file_size"] // self._size, 1)
        self._frame = bytearray(m.encode(m.Tread(0, self.fid, 0, self._size)))
        self._i = self.slot
        return [_walk(ROOT_FID, self.fid, self.p["file"].split("/")),
                (m.encode(m.Tlopen(0, self.fid, c.L_O_RDONLY)), m.Rlopen)]

    def start(self, tag):
        f = bytearray(self._frame)
        _TAG.pack_into(f, 5, tag)
        _U64.pack_into(f, 11, (self._i % self._span) * self._size)
        self._i += 1
        return f

    def on_reply(self, tag, reply):
        check(reply, m.Rread)
        n = _U32.unpack_from(reply, 7)[0]
        if n == 0:
            raise OpError("Tread returned 0 bytes inside the file")
        self.done_units += n
        return None


class Write(Op):
    """Twrite of `size` bytes into a per-slot file, offsets cycling over a bounded span."""

    name = "Twrite"
    unit = "bytes"

    def setup(self):
        self._size = self.p["size"]
        self._span = max(self.p["file_size"] // self._size, 1)
        self._frame = bytearray(m.encode(m.Twrite(0, self.fid, 0, b"w" * self._size)))
        self._i = 0
        dirfid = self.fid + 1
        self._dirfid = dirfid
        return [_walk(ROOT_FID, dirfid, self.p["dir"].split("/")),
                (m.encode(m.Twalk(0, dirfid, self.fid, ())), m.Rwalk),
                (m.encode(m.Tlcreate(0, self.fid, f"w{self.slot}", c.L_O_RDWR | c.L_O_CREAT, 0o644, 0)),
                 m.Rlcreate)]

    def start(self, tag):
        f = self._frame  # sent before it is reused: patch in place, no 512 KiB copy per request
        _TAG.pack_into(f, 5, tag)
        _U64.pack_into(f, 11, (self._i % self._span) * self._size)
        self._i += 1
        return f

    def on_reply(self, tag, reply):
        check(reply, m.Rwrite)
        self.done_units += _U32.unpack_from(reply, 7)[0]
        return None

    def teardown(self):
        return ([(m.encode(m.Tclunk(0, self.fid)), m.Rclunk)]
                + _unlink(self.p, self._dirfid, self.fid, f"w{self.slot}")
                + [(m.encode(m.Tclunk(0, self._dirfid)), m.Rclunk)])


OPS = {cls.__name__.lower(): cls for cls in (Getattr, WalkClunk, CreateWriteUnlink, Readdir, Read, Write)}
