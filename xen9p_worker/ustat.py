"""9P2000.u attributes: host (security-model) attributes <-> stat records and DM* modes,
and a directory as a stream of whole stat records (QEMU's rules).

A record carries n_uid/n_gid (strings uid/gid/muid empty, as QEMU sends them), atime/mtime
in seconds, and the extension: a symlink's target, "c|b major minor" for devices, and
"HARDLINKCOUNT n" for regular files and directories.
"""
from __future__ import annotations

import errno
import os
import stat
import threading

from xen9p_common.p9 import constants as C
from xen9p_common.p9.stat import StatRecord, pack_stat

from .backend.dirents import DirReader
from .backend.local import join

_M32 = 0xFFFFFFFF
_tls = threading.local()
_TYPE_OF = ((stat.S_ISDIR, C.DMDIR), (stat.S_ISLNK, C.DMSYMLINK), (stat.S_ISSOCK, C.DMSOCKET),
            (stat.S_ISFIFO, C.DMNAMEDPIPE), (stat.S_ISBLK, C.DMDEVICE), (stat.S_ISCHR, C.DMDEVICE))
_SPECIAL_BITS = ((stat.S_ISUID, C.DMSETUID), (stat.S_ISGID, C.DMSETGID), (stat.S_ISVTX, C.DMSETVTX))


def v9_mode(mode: int) -> int:
    """Unix st_mode -> 9P2000.u mode (permission bits plus DM* type and special bits)."""
    out = mode & 0o777
    for test, bit in _TYPE_OF:
        if test(mode):
            out |= bit
            break
    for ubit, dbit in _SPECIAL_BITS:
        if mode & ubit:
            out |= dbit
    return out


def unix_perm(v9mode: int) -> int:
    """The permission and setuid/setgid/sticky bits a 9P2000.u mode asks for (no file type)."""
    out = v9mode & 0o777
    for ubit, dbit in _SPECIAL_BITS:
        if v9mode & dbit:
            out |= ubit
    return out


def record(be, fd: int, rel: bytes, name: bytes, st=None) -> StatRecord:
    """The stat record of the object fd names (O_PATH or open), with the security model's view."""
    st, mode, uid, gid, rdev = be.attr(fd, rel, st)
    if stat.S_ISLNK(mode):
        ext = os.fsdecode(be.readlink(fd, rel))
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        ext = f"{'c' if stat.S_ISCHR(mode) else 'b'} {os.major(rdev)} {os.minor(rdev)}"
    elif stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        ext = f"HARDLINKCOUNT {st.st_nlink}"
    else:
        ext = ""
    return StatRecord(0, 0, be.qid(st, mode), v9_mode(mode), int(st.st_atime) & _M32, int(st.st_mtime) & _M32,
                      st.st_size, os.fsdecode(name), "", "", "", ext, uid & _M32, gid & _M32, 0)


def name_of(rel: bytes) -> bytes:
    return rel.rpartition(b"/")[2] if rel else b"/"


def _reader() -> DirReader:
    r = getattr(_tls, "dirreader", None)
    if r is None:
        r = _tls.dirreader = DirReader()
    return r


def records(be, dirfd: int, rel: bytes, cookie: int):
    """(packed record, cookie after it) for every entry from cookie on; no . or .., nothing hidden."""
    reader = _reader()
    hidden = be.model.hidden
    while True:
        batch = reader.read(dirfd, cookie)
        if not batch:
            return
        for _ino, doff, _dtype, name in batch:
            cookie = doff
            if name in (b".", b"..") or hidden(name):
                continue
            try:
                fd = be.lookup(dirfd, name)
            except OSError:
                continue  # gone since getdents
            try:
                rec = pack_stat(record(be, fd, join(rel, name), name))
            except OSError:
                continue
            finally:
                os.close(fd)
            yield bytes(rec), cookie


def cookie_at(be, dirfd: int, rel: bytes, offset: int, known: tuple[int, int]) -> int:
    """The getdents cookie at byte `offset` of the record stream: 0 at the start, the fid's
    remembered position, or found by replaying the stream (EINVAL inside a record)."""
    if offset == 0:
        return 0
    if offset == known[0]:
        return known[1]
    pos = 0
    cookie = 0
    for rec, cookie in records(be, dirfd, rel, 0):
        pos += len(rec)
        if pos == offset:
            return cookie
        if pos > offset:
            break
    else:
        return cookie  # at or past the end: an empty read
    raise OSError(errno.EINVAL, "directory offset inside a record")


def read_dir(be, dirfd: int, rel: bytes, cookie: int, count: int) -> tuple[bytes, int]:
    """Whole records from cookie on, at most count bytes (never split); the cookie after them."""
    out = bytearray()
    for rec, nxt in records(be, dirfd, rel, cookie):
        if len(out) + len(rec) > count:
            if not out:
                raise OSError(errno.EINVAL, "count too small for one directory entry")
            break
        out += rec
        cookie = nxt
    return bytes(out), cookie
