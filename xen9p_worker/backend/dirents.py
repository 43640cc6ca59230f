"""getdents64 through ctypes: directory entries with the host's d_off resume cookies.

The cookies are filesystem positions, valid for lseek() on any fd of the same
directory, so a Treaddir stream can continue on another fd or process.
"""
from __future__ import annotations

import ctypes
import os
import struct

_SYS_getdents64 = {"x86_64": 217, "aarch64": 61, "riscv64": 61}.get(os.uname().machine, 217)
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_HDR = struct.Struct("<QqHB")  # d_ino, d_off, d_reclen, d_type


class DirReader:
    """One reusable getdents64 buffer (one per thread: the buffer is not shared)."""

    def __init__(self, size: int = 64 * 1024) -> None:
        self._buf = ctypes.create_string_buffer(size)
        self._size = size

    def read(self, fd: int, offset: int):
        """Entries (d_ino, d_off, d_type, name) from cookie `offset` on, one batch."""
        os.lseek(fd, _signed(offset), os.SEEK_SET)
        n = _syscall(_SYS_getdents64, fd, self._buf, self._size)
        if n < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        raw = self._buf.raw[:n]
        out = []
        off = 0
        while off < n:
            ino, doff, reclen, dtype = _HDR.unpack_from(raw, off)
            name = raw[off + 19:off + reclen].split(b"\0", 1)[0]
            out.append((ino, doff & 0xFFFFFFFFFFFFFFFF, dtype, name))
            off += reclen
        return out


def _signed(v: int) -> int:
    # The wire carries u64; lseek takes a signed off_t (cookies of some filesystems are "negative").
    return v - (1 << 64) if v >= 1 << 63 else v
