"""Small host helpers on O_PATH fds: act on the object an fd names, never on a path string.

/proc/self/fd/N lands on the fd's own inode (a symlink there is not followed
again), so chmod/chown/utime/xattr calls through it cannot be redirected.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat

O_PATH_NOFOLLOW = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
OFF_MAX = (1 << 63) - 1  # host offsets, sizes and time_t are signed 64-bit: a guest's u64 above it is EINVAL


def proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def reopen(pfd: int, flags: int, st: os.stat_result | None = None) -> int:
    """Open the regular file or directory an O_PATH fd names; ENXIO for special files.

    The type check happens on the O_PATH fd before any open, so a fifo, device or
    socket on the host is never opened (no side effects, no blocking).
    """
    if st is None:
        st = os.fstat(pfd)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "is a symlink")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise OSError(errno.ENXIO, "special file")
    # O_NOFOLLOW would refuse the magic link itself; the fd's inode is already fixed.
    return os.open(proc(pfd), (flags & ~os.O_NOFOLLOW) | os.O_CLOEXEC)


def chmod(pfd: int, mode: int) -> None:
    os.chmod(proc(pfd), mode & 0o7777)


def chown(pfd: int, uid: int, gid: int) -> None:
    os.chown(proc(pfd), uid, gid)


def getxattr(fd: int, name: bytes) -> bytes:
    return os.getxattr(proc(fd), name)


def setxattr(fd: int, name: bytes, value: bytes, flags: int = 0) -> None:
    os.setxattr(proc(fd), name, value, flags)


def listxattr(fd: int) -> list[str]:
    return os.listxattr(proc(fd))


def removexattr(fd: int, name: bytes) -> None:
    os.removexattr(proc(fd), name)


UTIME_NOW = ((1 << 30) - 1)
UTIME_OMIT = ((1 << 30) - 2)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
_utimensat = _libc.utimensat
_utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]


def utimens(fd: int, atime, mtime) -> None:
    """utimensat on the fd's own object; each time is (sec, nsec), UTIME_NOW or UTIME_OMIT."""
    ts = (_Timespec * 2)()
    for i, t in enumerate((atime, mtime)):
        if isinstance(t, tuple):
            ts[i].tv_sec, ts[i].tv_nsec = t[0], t[1]
        else:
            ts[i].tv_sec, ts[i].tv_nsec = 0, t
    if _utimensat(-100, proc(fd).encode(), ts, 0) != 0:  # AT_FDCWD
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
