"""Handlers for open files: Tlopen, Tlcreate, Tread (also zero-copy), Twrite, Tfsync, Treaddir.

The zero-copy helpers place an Rread straight into transport-provided segments.
"""
from __future__ import annotations

import errno
import os
import stat
import struct
import threading

from xen9p_common.p9 import messages as M
from xen9p_common.p9 import constants as C

from .backend.dirents import DirReader
from .backend.hostops import OFF_MAX, reopen
from .backend.local import host_open_flags, join
from .fdcache import ROLE_OPEN, ROLE_PATH
from .fidfds import fs, iounit, open_slot, path_entry, path_slot
from .handlers_ns import xattr_write
from .fids import FID_DIR, FID_FILE, FID_PATH, FID_XATTR_READ, FID_XATTR_WRITE
from .quota import quota_for

_RREAD_HDR = struct.Struct("<IBHI")  # size, type, tag, count
_tls = threading.local()


def check_open_limit(s) -> None:
    lim = s.server.limits.max_open_files
    if lim is not None and s.fids.count_open() >= lim:
        raise OSError(errno.EMFILE, "open-files limit reached")


def t_lopen(s, m, req):
    e = path_entry(s, m.fid)
    check_open_limit(s)
    slot = path_slot(s, m.fid, e)
    try:
        st = os.fstat(slot.fd)
        if stat.S_ISDIR(st.st_mode):
            if m.flags & C.L_O_ACCMODE != C.L_O_RDONLY:
                raise OSError(errno.EISDIR, "directory opened for writing")
            flags, kind = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, FID_DIR
            fd = reopen(slot.fd, flags, st)
        else:
            flags, kind = host_open_flags(m.flags), FID_FILE
            fd = s.backend.open(slot.fd, m.flags)
        qid = s.backend.qid_at(fd, e.path)
    finally:
        s.fds.release(slot)
    ne = e.copy(kind=kind, open_flags=flags, qid=qid, holder_pid=s.pid, holder_fd=fd)
    try:
        s.fids.update(m.fid, ne)
    except BaseException:
        os.close(fd)
        raise
    s.fds.put((m.fid, ne.generation, ROLE_OPEN), fd)
    return M.Rlopen(m.tag, qid, iounit(s))


def t_lcreate(s, m, req):
    e = path_entry(s, m.fid)
    check_open_limit(s)
    quota_for(s).admit_files(1)
    name = fs(m.name)
    slot = path_slot(s, m.fid, e)
    try:
        fd = s.backend.create(slot.fd, name, m.flags, m.mode, e.uid, m.gid)
    finally:
        s.fds.release(slot)
    rel = join(e.path, name)
    try:
        qid = s.backend.qid(os.fstat(fd))
        ne = e.copy(kind=FID_FILE, path=rel, qid=qid, open_flags=host_open_flags(m.flags, True),
                    holder_pid=s.pid, holder_fd=fd)
        s.fids.update(m.fid, ne)
    except BaseException:
        os.close(fd)
        raise
    s.fds.drop((m.fid, e.generation, ROLE_PATH))  # that was the directory's
    s.fds.put((m.fid, ne.generation, ROLE_OPEN), fd)
    return M.Rlcreate(m.tag, qid, iounit(s))


_MAX_OFF = OFF_MAX  # (found by fuzzing: pread raised OverflowError, EIO)


def t_read(s, m, req):
    if m.offset > _MAX_OFF:
        raise OSError(errno.EINVAL, "offset beyond the host's range")
    e = s.fids.get(m.fid)
    count = min(m.count, s.msize - M.HEADER_SIZE - 4)
    if e.kind == FID_XATTR_READ:
        return M.Rread(m.tag, e.xattr_value[m.offset:m.offset + count])
    if e.kind != FID_FILE:
        raise OSError(errno.EBADF if e.kind == FID_PATH else errno.EISDIR, "fid not open for reading")
    if req.alloc is None:
        slot = open_slot(s, m.fid, e)
        try:
            return M.Rread(m.tag, os.pread(slot.fd, count, m.offset))
        finally:
            s.fds.release(slot)
    if type(m) not in s.inline_ops:
        return _alloc_and_read(s, m, e, req, count)
    # Served on the transport's thread: only what the page cache holds now, into room the
    # transport lends without waiting; anything that would wait (for the disk, or for a
    # ring's room: alloc raises BlockingIOError) is done on the worker pool, which replies.
    try:
        segs = req.alloc(11 + count)
    except BlockingIOError:
        return _to_pool(s, req, lambda s, m, req: _alloc_and_read(s, m, e, req, count))
    views = carve(segs, 11, count)
    n = _read_cached(s, m, e, views, count) if count else 0
    if n is None:
        return _to_pool(s, req, lambda s, m, req: _read_into(s, m, e, segs, views, count))
    write_into(segs, 0, _RREAD_HDR.pack(11 + n, M.Rread.TYPE, m.tag, n))
    return 11 + n


def _to_pool(s, req, fn):
    from .handlers import PENDING  # handlers imports this module
    s.pool_submit(s._run, req, fn)
    return PENDING


def _alloc_and_read(s, m, e, req, count: int) -> int:
    segs = req.alloc(11 + count)
    return _read_into(s, m, e, segs, carve(segs, 11, count), count)


def _read_cached(s, m, e, views, count: int) -> int | None:
    """Bytes read without waiting for the disk, or None if that would need it (or a short read is not EOF)."""
    slot = open_slot(s, m.fid, e)
    try:
        try:
            n = os.preadv(slot.fd, views, m.offset, os.RWF_NOWAIT)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EOPNOTSUPP):
                return None
            raise
        if n < count and m.offset + n < os.fstat(slot.fd).st_size:
            return None  # part of it is not cached: a short read is only for EOF
        return n
    finally:
        s.fds.release(slot)


def _read_into(s, m, e, segs, views, count: int) -> int:
    slot = open_slot(s, m.fid, e)
    try:
        n = os.preadv(slot.fd, views, m.offset) if count else 0
    finally:
        s.fds.release(slot)
    write_into(segs, 0, _RREAD_HDR.pack(11 + n, M.Rread.TYPE, m.tag, n))
    return 11 + n


def t_write(s, m, req):
    if m.offset > _MAX_OFF:
        raise OSError(errno.EINVAL, "offset beyond the host's range")
    e = s.fids.get(m.fid)
    if e.kind == FID_XATTR_WRITE:
        return xattr_write(s, m, e)
    if e.kind != FID_FILE:
        raise OSError(errno.EBADF, "fid not open for writing")
    slot = open_slot(s, m.fid, e)
    try:
        appending = e.open_flags & os.O_APPEND
        q = quota_for(s)
        if appending or q.max_space:
            size = os.fstat(slot.fd).st_size
            if appending and req.note is not None:
                # Not idempotent: a successor that re-runs this after a crash looks for the data
                # at or past this size before appending it again (ring_resume).
                req.note(size)
            end = (size if appending else m.offset) + len(m.data)
            if q.max_space and end > size:
                q.admit_space(end - size)  # ENOSPC (after auto-delete, where the device allows it)
        n = os.pwrite(slot.fd, m.data, m.offset)
    finally:
        s.fds.release(slot)
    return M.Rwrite(m.tag, n)


def t_fsync(s, m, req):
    e = s.fids.get(m.fid)
    if e.kind not in (FID_FILE, FID_DIR):
        raise OSError(errno.EBADF, "fid not open")
    slot = open_slot(s, m.fid, e)
    try:
        (os.fdatasync if m.datasync else os.fsync)(slot.fd)
    finally:
        s.fds.release(slot)
    return M.Rfsync(m.tag)


def t_readdir(s, m, req):
    e = s.fids.get(m.fid)
    if e.kind != FID_DIR:
        raise OSError(errno.ENOTDIR if e.kind == FID_FILE else errno.EBADF, "fid not an open directory")
    reader = getattr(_tls, "dirreader", None)
    if reader is None:
        reader = _tls.dirreader = DirReader()
    count = min(m.count, s.msize - M.HEADER_SIZE - 4)
    slot = open_slot(s, m.fid, e)
    try:
        data = s.backend.readdir(slot.fd, m.offset, count, reader)
    finally:
        s.fds.release(slot)
    return M.Rreaddir(m.tag, data)


# -- zero-copy helpers -------------------------------------------------------------

def carve(segs: list, start: int, length: int) -> list:
    """Views covering bytes [start, start+length) of the concatenation of segs."""
    out = []
    pos = 0
    end = start + length
    for seg in segs:
        n = len(seg)
        lo, hi = max(start, pos), min(end, pos + n)
        if lo < hi:
            out.append(seg[lo - pos:hi - pos])
        pos += n
        if pos >= end:
            break
    return out


def write_into(segs: list, start: int, data: bytes) -> None:
    off = 0
    for v in carve(segs, start, len(data)):
        v[:] = data[off:off + len(v)]
        off += len(v)
