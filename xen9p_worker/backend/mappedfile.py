"""The mapped-file security model: guest metadata as QEMU's text files beside each object.

<dir>/.virtfs_metadata/<name> (the export root: .virtfs_metadata_root) holds lines
"virtfs.uid=N", "virtfs.gid=N", "virtfs.mode=N", "virtfs.rdev=N"; those names are hidden and refused.
"""
from __future__ import annotations

import errno
import os
import stat

from .secmodel import MAPPED_DIR_MODE, META_DIR, META_ROOT, Where, _Mapped


class MappedFile(_Mapped):
    """Text lines virtfs.uid=N etc. in <dir>/.virtfs_metadata/<name> (root: .virtfs_metadata_root)."""

    name = "mapped-file"
    needs_where = True

    def check_name(self, name):
        if name == META_DIR or name == META_ROOT:
            raise OSError(errno.EINVAL, "reserved name")

    def hidden(self, name):
        return name == META_DIR or name == META_ROOT

    def _meta(self, where, create: bool) -> tuple[int, bytes]:
        """(dir fd to close, file name) of the metadata file for where."""
        if where is None or where.name is None:
            return os.dup(where.dirfd), META_ROOT
        try:
            mfd = os.open(META_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=where.dirfd)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(META_DIR, MAPPED_DIR_MODE, dir_fd=where.dirfd)
            mfd = os.open(META_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=where.dirfd)
        return mfd, where.name

    def load(self, pfd, where):
        try:
            mfd, name = self._meta(where, False)
        except OSError:
            return {}
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=mfd)
        except OSError:
            return {}
        finally:
            os.close(mfd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return {}
            text = os.read(fd, 4096)
        finally:
            os.close(fd)
        return parse_mapped_file(text)

    def store(self, pfd, where, values):
        cur = self.load(pfd, where)
        cur.update(values)
        mfd, name = self._meta(where, True)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=mfd)
        finally:
            os.close(mfd)
        try:
            os.write(fd, format_mapped_file(cur))
        finally:
            os.close(fd)

    def before_rmdir(self, dirfd, name):
        # A directory's own metadata dir would make rmdir fail with ENOTEMPTY.
        try:
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            return
        try:
            os.rmdir(META_DIR, dir_fd=sub)
        except FileNotFoundError:
            pass
        finally:
            os.close(sub)

    def unlinked(self, dirfd, name, isdir):
        try:
            mfd, mname = self._meta(Where(dirfd, name), False)
        except OSError:
            return
        try:
            os.unlink(mname, dir_fd=mfd)
        except OSError:
            pass
        finally:
            os.close(mfd)

    def renamed(self, odirfd, oname, ndirfd, nname):
        try:
            ofd, _ = self._meta(Where(odirfd, oname), False)
        except OSError:
            return
        try:
            nfd, _ = self._meta(Where(ndirfd, nname), True)
            try:
                os.rename(oname, nname, src_dir_fd=ofd, dst_dir_fd=nfd)
            except FileNotFoundError:
                pass
            finally:
                os.close(nfd)
        finally:
            os.close(ofd)


def parse_mapped_file(text: bytes) -> dict:
    """QEMU reads each line with atoi(); a bad number reads as 0 there and here."""
    out = {}
    for line in text.split(b"\n"):
        key, sep, val = line.partition(b"=")
        if not sep or not key.startswith(b"virtfs."):
            continue
        field = key[7:].decode("ascii", "replace")
        if field in ("uid", "gid", "mode", "rdev"):
            out[field] = _atoi(val)
    return out


def format_mapped_file(values: dict) -> bytes:
    lines = [b"virtfs.%s=%d\n" % (k.encode(), _as_c_int(values[k]))
             for k in ("uid", "gid", "mode", "rdev") if k in values]
    return b"".join(lines)


def _as_c_int(v: int) -> int:
    # QEMU prints these with %d from an int: values above 2^31 appear negative.
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _atoi(raw: bytes) -> int:
    s = raw.strip()
    sign = 1
    if s[:1] in (b"-", b"+"):
        sign = -1 if s[:1] == b"-" else 1
        s = s[1:]
    digits = b""
    for ch in s:
        if 48 <= ch <= 57:
            digits += bytes((ch,))
        else:
            break
    return (sign * int(digits) if digits else 0) & 0xFFFFFFFF
