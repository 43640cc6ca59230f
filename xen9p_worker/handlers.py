"""One function per 9P2000.L request: fid table + backend in, reply message out.

Dispatch owns threads, tags and flushes; these functions own 9P semantics.
Each takes (session, msg, req) and returns a message, raw reply, or PENDING.
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
from .backend.hostops import reopen
from .backend.local import host_open_flags, join
from .fdcache import ROLE_OPEN, ROLE_PATH
from .fids import FID_DIR, FID_FILE, FID_PATH, FID_XATTR_READ, FID_XATTR_WRITE, FidEntry
from .locks import INF

PENDING = object()  # the handler will call session.finish() later
V9FS_MAGIC = 0x01021997
NONUNAME = 0xFFFFFFFF
_RREAD_HDR = struct.Struct("<IBHI")  # size, type, tag, count
_RGETATTR = struct.Struct("<IBHQBIQIIIQQQQQ" + "Q" * 10)  # header + every Rgetattr field, in order
_tls = threading.local()


def _fs(name: str) -> bytes:
    return os.fsencode(name)


# -- fid -> fd ----------------------------------------------------------------

def path_slot(s, fid: int, e: FidEntry):
    return s.fds.acquire((fid, e.generation, ROLE_PATH), lambda: s.backend.walk(e.path))


def open_slot(s, fid: int, e: FidEntry):
    def reopen():
        if e.holder_pid and e.holder_pid != s.pid and e.holder_fd >= 0:
            # The hook for workers sharing a fid table: reach the holder's (maybe unlinked) file.
            return os.open(f"/proc/{e.holder_pid}/fd/{e.holder_fd}", e.open_flags & ~os.O_TRUNC)
        pfd = s.backend.walk(e.path)
        try:
            return reopen(pfd, e.open_flags & ~(os.O_TRUNC | os.O_CREAT | os.O_EXCL))
        finally:
            os.close(pfd)
    return s.fds.acquire((fid, e.generation, ROLE_OPEN), reopen, evictable=False)


def any_slot(s, fid: int, e: FidEntry):
    """The open fd of an open fid (open-then-unlink keeps working), else its O_PATH fd."""
    if e.kind == FID_FILE or e.kind == FID_DIR:
        return open_slot(s, fid, e)
    return path_slot(s, fid, e)


def _drop_fds(s, fid: int, e: FidEntry) -> None:
    s.fds.drop((fid, e.generation, ROLE_PATH))
    s.fds.drop((fid, e.generation, ROLE_OPEN))


def _path_entry(s, fid: int, kinds=(FID_PATH,)) -> FidEntry:
    e = s.fids.get(fid)
    if e.kind not in kinds:
        raise OSError(errno.EINVAL, "wrong kind of fid")
    return e


def _iounit(s) -> int:
    bs = s.backend.blksize
    n = (s.msize - M.IOHDRSZ) // bs * bs
    return n or s.msize - M.IOHDRSZ


# -- session -------------------------------------------------------------------

def t_version(s, m, req):
    if m.msize < C.MIN_MSIZE:
        raise OSError(errno.EINVAL, "msize below 4096")
    s.reset()
    version = C.VERSION_9P2000L if m.version.startswith(C.VERSION_9P2000L) else "unknown"
    msize = min(m.msize, s.server.msize_cap)
    s.state.msize, s.state.version = msize, version
    return M.Rversion(m.tag, msize, version)


def t_auth(s, m, req):
    raise OSError(errno.EOPNOTSUPP, "no authentication")


def t_attach(s, m, req):
    if m.afid != M.NOFID:
        raise OSError(errno.EOPNOTSUPP, "no authentication")
    uid = m.n_uname if m.n_uname != NONUNAME else 0
    qid = s.backend.qid_at(s.backend.root_fd, b"")
    s.fids.add(m.fid, FidEntry(FID_PATH, b"", qid, uid))
    return M.Rattach(m.tag, qid)


def clunk_all(s) -> None:
    for fid, e in s.fids.clear():
        _release(s, fid, e)
    s.fds.clear()


def _release(s, fid: int, e: FidEntry) -> None:
    key = s.lock_keys.pop(fid, None)
    if key is not None:
        s.locks.release_fid(key, fid)
    _drop_fds(s, fid, e)


def t_clunk(s, m, req):
    e = s.fids.remove(m.fid)
    try:
        if e.kind == FID_XATTR_WRITE:
            _apply_xattr(s, m.fid, e)
    finally:
        _release(s, m.fid, e)
    return M.Rclunk(m.tag)


# -- walking and attributes ------------------------------------------------------

def t_walk(s, m, req):
    e = s.fids.get(m.fid)
    if e.kind in (FID_XATTR_READ, FID_XATTR_WRITE):
        raise OSError(errno.EINVAL, "walk from an xattr fid")
    if not m.wnames:
        ne = FidEntry(FID_PATH, e.path, e.qid, e.uid)
        if m.newfid == m.fid:
            return M.Rwalk(m.tag, ())
        s.fids.add(m.newfid, ne)
        return M.Rwalk(m.tag, ())
    be = s.backend
    slot = path_slot(s, m.fid, e)
    comps = e.path.split(b"/") if e.path else []
    qids = []
    fd = -1
    try:
        cur = slot.fd
        for i, wname in enumerate(m.wnames):
            name = _fs(wname)
            try:
                if name == b"..":
                    if comps:
                        comps.pop()
                    nfd = be.walk(b"/".join(comps))
                elif name == b".":
                    nfd = os.dup(cur)
                else:
                    be.check_name(name)
                    nfd = be.lookup(cur, name)
                    comps.append(name)
                if fd >= 0:
                    os.close(fd)
                fd = cur = nfd
                qids.append(be.qid_at(fd, b"/".join(comps)))
            except OSError:
                if i == 0:
                    raise
                break  # partial walk: the qids so far, newfid untouched
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    finally:
        s.fds.release(slot)
    if len(qids) < len(m.wnames):
        if fd >= 0:
            os.close(fd)
        return M.Rwalk(m.tag, tuple(qids))
    rel = b"/".join(comps)
    ne = FidEntry(FID_PATH, rel, qids[-1], e.uid)
    try:
        if m.newfid == m.fid:
            if e.kind != FID_PATH:
                raise OSError(errno.EINVAL, "walk of an open fid onto itself")
            _drop_fds(s, m.fid, e)
            s.fids.update(m.fid, ne)
        else:
            s.fids.add(m.newfid, ne)
    except BaseException:
        os.close(fd)
        raise
    s.fds.put((m.newfid, ne.generation, ROLE_PATH), fd, evictable=True)
    return M.Rwalk(m.tag, tuple(qids))


def t_getattr(s, m, req):
    e = s.fids.get(m.fid)
    slot = any_slot(s, m.fid, e)
    try:
        st, mode, uid, gid, rdev = s.backend.attr(slot.fd, e.path)
    finally:
        s.fds.release(slot)
    q = s.backend.qid(st, mode)
    # Packed by hand: the hottest reply of all (the generic encoder costs ~10 us here).
    return _RGETATTR.pack(_RGETATTR.size, M.Rgetattr.TYPE, m.tag, C.GETATTR_BASIC, q[0], q[1], q[2],
                          mode, uid, gid, st.st_nlink, rdev, st.st_size, st.st_blksize, st.st_blocks,
                          int(st.st_atime), st.st_atime_ns % 1_000_000_000,
                          int(st.st_mtime), st.st_mtime_ns % 1_000_000_000,
                          int(st.st_ctime), st.st_ctime_ns % 1_000_000_000, 0, 0, 0, 0)


def t_setattr(s, m, req):
    e = s.fids.get(m.fid)
    slot = any_slot(s, m.fid, e)
    try:
        s.backend.setattr(slot.fd, e.path, m.valid, m.mode, m.uid, m.gid, m.size,
                          (m.atime_sec, m.atime_nsec), (m.mtime_sec, m.mtime_nsec))
    finally:
        s.fds.release(slot)
    return M.Rsetattr(m.tag)


def t_statfs(s, m, req):
    e = s.fids.get(m.fid)
    slot = any_slot(s, m.fid, e)
    try:
        v = os.fstatvfs(slot.fd)
    finally:
        s.fds.release(slot)
    return M.Rstatfs(m.tag, V9FS_MAGIC, v.f_bsize, v.f_blocks, v.f_bfree, v.f_bavail, v.f_files,
                     v.f_ffree, 0, v.f_namemax)


def t_readlink(s, m, req):
    e = _path_entry(s, m.fid)
    slot = path_slot(s, m.fid, e)
    try:
        return M.Rreadlink(m.tag, os.fsdecode(s.backend.readlink(slot.fd, e.path)))
    finally:
        s.fds.release(slot)


# -- open, read, write ---------------------------------------------------------------

def _check_open_limit(s) -> None:
    lim = s.server.limits.max_open_files
    if lim is not None and s.fids.count_open() >= lim:
        raise OSError(errno.EMFILE, "open-files limit reached")


def t_lopen(s, m, req):
    e = _path_entry(s, m.fid)
    _check_open_limit(s)
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
    return M.Rlopen(m.tag, qid, _iounit(s))


def t_lcreate(s, m, req):
    e = _path_entry(s, m.fid)
    _check_open_limit(s)
    name = _fs(m.name)
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
    return M.Rlcreate(m.tag, qid, _iounit(s))


def t_read(s, m, req):
    e = s.fids.get(m.fid)
    count = min(m.count, s.msize - M.HEADER_SIZE - 4)
    if e.kind == FID_XATTR_READ:
        return M.Rread(m.tag, e.xattr_value[m.offset:m.offset + count])
    if e.kind != FID_FILE:
        raise OSError(errno.EBADF if e.kind == FID_PATH else errno.EISDIR, "fid not open for reading")
    slot = open_slot(s, m.fid, e)
    try:
        if req.alloc is None:
            return M.Rread(m.tag, os.pread(slot.fd, count, m.offset))
        segs = req.alloc(11 + count)
        views = carve(segs, 11, count)
        n = os.preadv(slot.fd, views, m.offset) if count else 0
    finally:
        s.fds.release(slot)
    write_into(segs, 0, _RREAD_HDR.pack(11 + n, M.Rread.TYPE, m.tag, n))
    return 11 + n


def t_write(s, m, req):
    e = s.fids.get(m.fid)
    if e.kind == FID_XATTR_WRITE:
        return _xattr_write(s, m, e)
    if e.kind != FID_FILE:
        raise OSError(errno.EBADF, "fid not open for writing")
    slot = open_slot(s, m.fid, e)
    try:
        _check_space(s, slot.fd, m.offset + len(m.data))
        n = os.pwrite(slot.fd, m.data, m.offset)
    finally:
        s.fds.release(slot)
    return M.Rwrite(m.tag, n)


def _check_space(s, fd: int, end: int) -> None:
    cap = s.server.limits.max_space
    if cap is None:
        return
    size = os.fstat(fd).st_size
    if end > size and s.server.space_used() + (end - size) > cap:
        raise OSError(errno.ENOSPC, "export space limit reached")


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


# -- namespace -----------------------------------------------------------------------

def _in_dir(s, dfid: int, fn):
    """Run fn(dir O_PATH fd, dir entry) with the fd of directory fid dfid."""
    e = _path_entry(s, dfid)
    slot = path_slot(s, dfid, e)
    try:
        return fn(slot.fd, e)
    finally:
        s.fds.release(slot)


def _new_qid(s, dirfd: int, name: bytes, rel: bytes):
    fd = s.backend.lookup(dirfd, name)
    try:
        return s.backend.qid_at(fd, rel)
    finally:
        os.close(fd)


def t_mkdir(s, m, req):
    name = _fs(m.name)

    def go(dirfd, e):
        s.backend.mkdir(dirfd, name, m.mode, e.uid, m.gid)
        return _new_qid(s, dirfd, name, join(e.path, name))
    return M.Rmkdir(m.tag, _in_dir(s, m.dfid, go))


def t_symlink(s, m, req):
    name = _fs(m.name)

    def go(dirfd, e):
        s.backend.symlink(dirfd, name, _fs(m.symtgt), e.uid, m.gid)
        return _new_qid(s, dirfd, name, join(e.path, name))
    return M.Rsymlink(m.tag, _in_dir(s, m.fid, go))


def t_mknod(s, m, req):
    name = _fs(m.name)

    def go(dirfd, e):
        s.backend.mknod(dirfd, name, m.mode, os.makedev(m.major, m.minor), e.uid, m.gid)
        return _new_qid(s, dirfd, name, join(e.path, name))
    return M.Rmknod(m.tag, _in_dir(s, m.dfid, go))


def t_link(s, m, req):
    te = s.fids.get(m.fid)
    tslot = any_slot(s, m.fid, te)
    try:
        _in_dir(s, m.dfid, lambda dirfd, e: s.backend.link(tslot.fd, dirfd, _fs(m.name)))
    finally:
        s.fds.release(tslot)
    return M.Rlink(m.tag)


def _rename(s, odirfd, odir: bytes, oname: bytes, ndirfd, ndir: bytes, nname: bytes) -> None:
    s.backend.rename(odirfd, oname, ndirfd, nname)
    s.fids.rename_subtree(join(odir, oname), join(ndir, nname))


def t_rename(s, m, req):
    e = s.fids.get(m.fid)
    if not e.path:
        raise OSError(errno.EBUSY, "cannot rename the export root")
    head, _, oname = e.path.rpartition(b"/")
    ofd = s.backend.walk(head)
    try:
        _in_dir(s, m.dfid, lambda ndirfd, ne: _rename(s, ofd, head, oname, ndirfd, ne.path, _fs(m.name)))
    finally:
        os.close(ofd)
    return M.Rrename(m.tag)


def t_renameat(s, m, req):
    oname, nname = _fs(m.oldname), _fs(m.newname)

    def outer(ofd, oe):
        return _in_dir(s, m.newdirfid, lambda nfd, ne: _rename(s, ofd, oe.path, oname, nfd, ne.path, nname))
    _in_dir(s, m.olddirfid, outer)
    return M.Rrenameat(m.tag)


def t_unlinkat(s, m, req):
    name = _fs(m.name)
    isdir = bool(m.flags & C.AT_REMOVEDIR)
    _in_dir(s, m.dirfid, lambda dirfd, e: s.backend.unlink(dirfd, name, isdir))
    return M.Runlinkat(m.tag)


def t_remove(s, m, req):
    e = s.fids.get(m.fid)
    try:
        if not e.path:
            raise OSError(errno.EBUSY, "cannot remove the export root")
        slot = any_slot(s, m.fid, e)
        try:
            isdir = stat.S_ISDIR(os.fstat(slot.fd).st_mode)
        finally:
            s.fds.release(slot)
        head, _, name = e.path.rpartition(b"/")
        pfd = s.backend.walk(head)
        try:
            s.backend.unlink(pfd, name, isdir)
        finally:
            os.close(pfd)
    finally:
        try:  # Tremove clunks the fid whatever happened
            s.fids.remove(m.fid)
            _release(s, m.fid, e)
        except OSError:
            pass
    return M.Rremove(m.tag)


# -- xattrs ----------------------------------------------------------------------

def t_xattrwalk(s, m, req):
    e = s.fids.get(m.fid)
    if e.kind in (FID_XATTR_READ, FID_XATTR_WRITE):
        raise OSError(errno.EINVAL, "xattr walk from an xattr fid")
    slot = any_slot(s, m.fid, e)
    try:
        name = _fs(m.name)
        value = s.backend.xattr_list(slot.fd) if not name else s.backend.xattr_get(slot.fd, name)
    finally:
        s.fds.release(slot)
    s.fids.add(m.newfid, FidEntry(FID_XATTR_READ, e.path, e.qid, e.uid, xattr_name=name, xattr_value=value,
                                  xattr_size=len(value)))
    return M.Rxattrwalk(m.tag, len(value))


def t_xattrcreate(s, m, req):
    e = _path_entry(s, m.fid)
    if m.attr_size > C.XATTR_MAX_SIZE:
        raise OSError(errno.E2BIG, "xattr value above 64 KiB")
    if m.flags & ~(C.XATTR_CREATE | C.XATTR_REPLACE):
        raise OSError(errno.EINVAL, "bad xattr flags")
    name = _fs(m.name)
    if not name:
        raise OSError(errno.EINVAL, "empty xattr name")
    s.backend.model.xattr_name(name, True)  # refuse reserved names now, not at clunk
    s.fids.update(m.fid, e.copy(kind=FID_XATTR_WRITE, xattr_name=name, xattr_size=m.attr_size,
                                xattr_flags=m.flags, xattr_value=b""))
    return M.Rxattrcreate(m.tag)


def _xattr_write(s, m, e):
    if m.offset != len(e.xattr_value):
        raise OSError(errno.EINVAL, "xattr value must be written in order")
    if m.offset + len(m.data) > e.xattr_size:
        raise OSError(errno.ENOSPC, "xattr value longer than announced")
    s.fids.update(m.fid, e.copy(xattr_value=e.xattr_value + bytes(m.data)))
    return M.Rwrite(m.tag, len(m.data))


def _apply_xattr(s, fid: int, e: FidEntry) -> None:
    if len(e.xattr_value) != e.xattr_size:
        raise OSError(errno.EINVAL, "xattr value shorter than announced")
    slot = path_slot(s, fid, e.copy(kind=FID_PATH))
    try:
        if e.xattr_size == 0 and e.xattr_flags & C.XATTR_REPLACE:
            s.backend.xattr_remove(slot.fd, e.xattr_name)
        else:
            s.backend.xattr_set(slot.fd, e.xattr_name, e.xattr_value, e.xattr_flags)
    finally:
        s.fds.release(slot)


# -- locks -----------------------------------------------------------------------------

def _lock_key(s, fid: int, e: FidEntry) -> tuple:
    slot = any_slot(s, fid, e)
    try:
        st = os.fstat(slot.fd)
    finally:
        s.fds.release(slot)
    return (st.st_dev, st.st_ino)


def t_lock(s, m, req):
    e = s.fids.get(m.fid)
    if m.type not in (C.LOCK_TYPE_RDLCK, C.LOCK_TYPE_WRLCK, C.LOCK_TYPE_UNLCK):
        raise OSError(errno.EINVAL, "bad lock type")
    key = _lock_key(s, m.fid, e)
    owner = (m.client_id, m.proc_id)
    if m.type != C.LOCK_TYPE_UNLCK:
        s.lock_keys[m.fid] = key
    if m.type == C.LOCK_TYPE_UNLCK or not m.flags & C.LOCK_FLAGS_BLOCK:
        ok = s.locks.lock(key, owner, m.type, m.start, m.length, m.fid)
        return M.Rlock(m.tag, C.LOCK_SUCCESS if ok else C.LOCK_BLOCKED)
    w = s.locks.lock_or_wait(key, owner, m.type, m.start, m.length, m.fid,
                             lambda ok: s.finish(req, M.Rlock(m.tag, C.LOCK_SUCCESS)))
    if w is None:
        return M.Rlock(m.tag, C.LOCK_SUCCESS)
    return s.park(req, lambda: s.locks.cancel(w))


def t_getlock(s, m, req):
    e = s.fids.get(m.fid)
    key = _lock_key(s, m.fid, e)
    lk = s.locks.test(key, (m.client_id, m.proc_id), m.type, m.start, m.length)
    if lk is None:
        return M.Rgetlock(m.tag, C.LOCK_TYPE_UNLCK, m.start, m.length, m.proc_id, m.client_id)
    length = 0 if lk.end >= INF else lk.end - lk.start
    return M.Rgetlock(m.tag, lk.type, lk.start, length, lk.owner[1], lk.owner[0])


TABLE = {
    M.Tversion: t_version, M.Tauth: t_auth, M.Tattach: t_attach, M.Twalk: t_walk, M.Tclunk: t_clunk,
    M.Tgetattr: t_getattr, M.Tsetattr: t_setattr, M.Tstatfs: t_statfs, M.Treadlink: t_readlink,
    M.Tlopen: t_lopen, M.Tlcreate: t_lcreate, M.Tread: t_read, M.Twrite: t_write, M.Tfsync: t_fsync,
    M.Treaddir: t_readdir, M.Tmkdir: t_mkdir, M.Tsymlink: t_symlink, M.Tmknod: t_mknod, M.Tlink: t_link,
    M.Trename: t_rename, M.Trenameat: t_renameat, M.Tunlinkat: t_unlinkat, M.Tremove: t_remove,
    M.Txattrwalk: t_xattrwalk, M.Txattrcreate: t_xattrcreate, M.Tlock: t_lock, M.Tgetlock: t_getlock,
}

# Served on the caller's thread: metadata-only calls that do not wait on disk I/O.
INLINE = frozenset({M.Tversion, M.Tauth, M.Tattach, M.Twalk, M.Tclunk, M.Tgetattr, M.Tstatfs,
                    M.Treadlink, M.Txattrwalk, M.Txattrcreate, M.Tlock, M.Tgetlock})
