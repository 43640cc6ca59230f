"""getdents64 through ctypes: directory entries with the host's d_off resume cookies, packed for Rreaddir.

The cookies are filesystem positions, valid for lseek() on any fd of the same
directory, so a Treaddir stream can continue on another fd or process.
"""
from __future__ import annotations

import ctypes
import os
import struct

from xen9p_common.p9 import constants as C

_SYS_getdents64 = {"x86_64": 217, "aarch64": 61, "riscv64": 61}.get(os.uname().machine, 217)
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_HDR = struct.Struct("<QqHB")  # d_ino, d_off, d_reclen, d_type
# A 9P dirent header: qid (type, version, path), offset, type, name length. The offset is packed
# signed: the same eight bytes as the u64 cookie, without masking each one.
_ENT = struct.Struct("<BIQqBH")
_ENT_SIZE = 24
_NAME_AT = 19  # d_name's offset in a linux_dirent64
_INO_MASK = (1 << 48) - 1
_DT_DIR = 4
# d_type -> qid.type, as QEMU derives it without a stat per entry; qid.version is 0 in dirents.
_QTYPE = tuple(C.QTDIR if t == _DT_DIR else C.QTSYMLINK if t == 10 else C.QTFILE for t in range(256))


class DirReader:
    """One reusable getdents64 buffer (one per thread: the buffer is not shared)."""

    def __init__(self, size: int = 64 * 1024) -> None:
        self._buf = ctypes.create_string_buffer(size)
        self._size = size

    def _batch(self, fd: int, offset: int) -> bytes:
        os.lseek(fd, _signed(offset), os.SEEK_SET)
        n = _syscall(_SYS_getdents64, fd, self._buf, self._size)
        if n < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return ctypes.string_at(self._buf, n)

    def read(self, fd: int, offset: int):
        """Entries (d_ino, d_off, d_type, name) from cookie `offset` on, one batch."""
        raw = self._batch(fd, offset)
        out = []
        off = 0
        while off < len(raw):
            ino, doff, reclen, dtype = _HDR.unpack_from(raw, off)
            s = off + _NAME_AT
            out.append((ino, doff & 0xFFFFFFFFFFFFFFFF, dtype, raw[s:raw.find(0, s)]))
            off += reclen
        return out

    def pack(self, fd: int, offset: int, count: int, qpath_base: int | None, qpath,
             hidden=None, mapped: bool = False) -> bytes:
        """Packed Rreaddir payload of at most `count` bytes from cookie `offset` on.

        qid.path of an entry is `qpath_base | d_ino` while d_ino fits 48 bits and
        qpath_base is not None, else `qpath(d_ino)`. `hidden(name)` entries are
        skipped; `mapped` reports non-directories as type 0 (unknown) so the client stats them.
        """
        parts: list[bytes] = []
        add = parts.append
        pack = _ENT.pack
        qtypes = _QTYPE
        fast = qpath_base is not None
        used = 0
        while True:
            raw = self._batch(fd, offset)
            if not raw:
                break
            find = raw.find
            n = len(raw)
            off = 0
            while off < n:
                ino, doff, reclen, dtype = _HDR.unpack_from(raw, off)
                s = off + _NAME_AT
                e = find(0, s)
                off += reclen
                if hidden is not None and hidden(raw[s:e]):
                    offset = doff
                    continue
                used += _ENT_SIZE + e - s
                if used > count:
                    return b"".join(parts)
                path = qpath_base | ino if fast and ino <= _INO_MASK else qpath(ino)
                if mapped and dtype != _DT_DIR:
                    # A host file may stand in for a symlink or device: let the client ask.
                    add(pack(C.QTFILE, 0, path, doff, 0, e - s))
                else:
                    add(pack(qtypes[dtype], 0, path, doff, dtype, e - s))
                add(raw[s:e])
                offset = doff
        return b"".join(parts)


def _signed(v: int) -> int:
    # The wire carries u64; lseek takes a signed off_t (cookies of some filesystems are "negative").
    return v - (1 << 64) if v >= 1 << 63 else v
