"""Handlers that change the namespace (mkdir, symlink, mknod, link, rename, unlink, remove),
xattrs (walk, create, write, apply at clunk) and byte-range locks (Tlock, Tgetlock).
"""
from __future__ import annotations

import errno
import os
import stat

from xen9p_common.p9 import messages as M
from xen9p_common.p9 import constants as C

from .backend.local import join
from .fidfds import any_slot, fs, path_entry, path_slot, pin_open_files, release
from .fids import FID_PATH, FID_XATTR_READ, FID_XATTR_WRITE, FidEntry
from .hostlocks import open_for_locks
from .locks import INF
from .quota import quota_for


# -- namespace -----------------------------------------------------------------------

def _in_dir(s, dfid: int, fn):
    """Run fn(dir O_PATH fd, dir entry) with the fd of directory fid dfid."""
    e = path_entry(s, dfid)
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
    name = fs(m.name)
    quota_for(s).admit_files(1)  # max-files (auto-delete may make room)

    def go(dirfd, e):
        s.backend.mkdir(dirfd, name, m.mode, e.uid, m.gid)
        return _new_qid(s, dirfd, name, join(e.path, name))
    return M.Rmkdir(m.tag, _in_dir(s, m.dfid, go))


def t_symlink(s, m, req):
    name = fs(m.name)
    quota_for(s).admit_files(1)  # max-files (auto-delete may make room)

    def go(dirfd, e):
        s.backend.symlink(dirfd, name, fs(m.symtgt), e.uid, m.gid)
        return _new_qid(s, dirfd, name, join(e.path, name))
    return M.Rsymlink(m.tag, _in_dir(s, m.fid, go))


def t_mknod(s, m, req):
    name = fs(m.name)
    quota_for(s).admit_files(1)  # max-files (auto-delete may make room)

    if m.major > 0x7FFFFFFF or m.minor > 0x7FFFFFFF:  # os.makedev takes C ints (found by fuzzing)
        raise OSError(errno.EINVAL, "device number out of range")

    def go(dirfd, e):
        s.backend.mknod(dirfd, name, m.mode, os.makedev(m.major, m.minor), e.uid, m.gid)
        return _new_qid(s, dirfd, name, join(e.path, name))
    return M.Rmknod(m.tag, _in_dir(s, m.dfid, go))


def t_link(s, m, req):
    te = s.fids.get(m.fid)
    quota_for(s).admit_files(1)
    tslot = any_slot(s, m.fid, te)
    try:
        _in_dir(s, m.dfid, lambda dirfd, e: s.backend.link(tslot.fd, dirfd, fs(m.name)))
    finally:
        s.fds.release(tslot)
    return M.Rlink(m.tag)


def _rename(s, odirfd, odir: bytes, oname: bytes, ndirfd, ndir: bytes, nname: bytes) -> None:
    pin_open_files(s, join(ndir, nname))  # a file renamed over loses its name
    s.backend.rename(odirfd, oname, ndirfd, nname)
    s.fids.rename_subtree(join(odir, oname), join(ndir, nname))


def t_rename(s, m, req):
    e = s.fids.get(m.fid)
    if not e.path:
        raise OSError(errno.EBUSY, "cannot rename the export root")
    head, _, oname = e.path.rpartition(b"/")
    ofd = s.backend.walk(head)
    try:
        _in_dir(s, m.dfid, lambda ndirfd, ne: _rename(s, ofd, head, oname, ndirfd, ne.path, fs(m.name)))
    finally:
        os.close(ofd)
    return M.Rrename(m.tag)


def t_renameat(s, m, req):
    oname, nname = fs(m.oldname), fs(m.newname)

    def outer(ofd, oe):
        return _in_dir(s, m.newdirfid, lambda nfd, ne: _rename(s, ofd, oe.path, oname, nfd, ne.path, nname))
    _in_dir(s, m.olddirfid, outer)
    return M.Rrenameat(m.tag)


def t_unlinkat(s, m, req):
    name = fs(m.name)
    isdir = bool(m.flags & C.AT_REMOVEDIR)
    def go(dirfd, e):
        if not isdir:
            pin_open_files(s, join(e.path, name))
        s.backend.unlink(dirfd, name, isdir)
    _in_dir(s, m.dirfid, go)
    return M.Runlinkat(m.tag)


def remove_entry(s, fid: int, e: FidEntry) -> None:
    """Remove the file or directory fid names (Tremove, a clunk after ORCLOSE)."""
    if not e.path:
        raise OSError(errno.EBUSY, "cannot remove the export root")
    slot = any_slot(s, fid, e)
    try:
        isdir = stat.S_ISDIR(os.fstat(slot.fd).st_mode)
    finally:
        s.fds.release(slot)
    head, _, name = e.path.rpartition(b"/")
    pfd = s.backend.walk(head)
    try:
        if not isdir:
            pin_open_files(s, e.path)
        s.backend.unlink(pfd, name, isdir)
    finally:
        os.close(pfd)


def t_remove(s, m, req):
    e = s.fids.get(m.fid)
    try:
        remove_entry(s, m.fid, e)
    finally:
        try:  # Tremove clunks the fid whatever happened
            s.fids.remove(m.fid)
            release(s, m.fid, e)
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
        name = fs(m.name)
        value = s.backend.xattr_list(slot.fd) if not name else s.backend.xattr_get(slot.fd, name)
    finally:
        s.fds.release(slot)
    s.fids.add(m.newfid, FidEntry(FID_XATTR_READ, e.path, e.qid, e.uid, xattr_name=name, xattr_value=value,
                                  xattr_size=len(value)))
    return M.Rxattrwalk(m.tag, len(value))


def t_xattrcreate(s, m, req):
    e = path_entry(s, m.fid)
    if m.attr_size > C.XATTR_MAX_SIZE:
        raise OSError(errno.E2BIG, "xattr value above 64 KiB")
    if m.flags & ~(C.XATTR_CREATE | C.XATTR_REPLACE):
        raise OSError(errno.EINVAL, "bad xattr flags")
    name = fs(m.name)
    if not name:
        raise OSError(errno.EINVAL, "empty xattr name")
    s.backend.check_writable()             # a read-only export refuses now, not at clunk
    s.backend.xattr_host_name(name, True)  # refuse reserved (or NUL-holding) names now, not at clunk
    s.fids.update(m.fid, e.copy(kind=FID_XATTR_WRITE, xattr_name=name, xattr_size=m.attr_size,
                                xattr_flags=m.flags, xattr_value=b""))
    return M.Rxattrcreate(m.tag)


def xattr_write(s, m, e):
    if m.offset != len(e.xattr_value):
        raise OSError(errno.EINVAL, "xattr value must be written in order")
    if m.offset + len(m.data) > e.xattr_size:
        raise OSError(errno.ENOSPC, "xattr value longer than announced")
    s.fids.update(m.fid, e.copy(xattr_value=e.xattr_value + bytes(m.data)))
    return M.Rwrite(m.tag, len(m.data))


def apply_xattr(s, fid: int, e: FidEntry) -> None:
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


def _lock_opener(s, fid: int, e: FidEntry):
    """Opens a new fd on the fid's file, for a lock table that holds its locks on the host too."""
    def opener() -> int:
        slot = any_slot(s, fid, e)
        try:
            return open_for_locks(slot.fd)
        finally:
            s.fds.release(slot)
    return opener


def t_lock(s, m, req):
    e = s.fids.get(m.fid)
    if m.type not in (C.LOCK_TYPE_RDLCK, C.LOCK_TYPE_WRLCK, C.LOCK_TYPE_UNLCK):
        raise OSError(errno.EINVAL, "bad lock type")
    key = _lock_key(s, m.fid, e)
    owner = (m.client_id, m.proc_id)
    if m.type != C.LOCK_TYPE_UNLCK:
        s.lock_keys[m.fid] = key
    if m.type == C.LOCK_TYPE_UNLCK or not m.flags & C.LOCK_FLAGS_BLOCK:
        # An unlock needs no new host OFD: if the keeper has none, the device holds nothing there.
        opener = None if m.type == C.LOCK_TYPE_UNLCK else _lock_opener(s, m.fid, e)
        ok = s.locks.lock(key, owner, m.type, m.start, m.length, m.fid, opener=opener)
        return M.Rlock(m.tag, C.LOCK_SUCCESS if ok else C.LOCK_BLOCKED)
    w = s.locks.lock_or_wait(key, owner, m.type, m.start, m.length, m.fid,
                             lambda ok: s.finish(req, M.Rlock(m.tag, C.LOCK_SUCCESS)),
                             opener=_lock_opener(s, m.fid, e))
    if w is None:
        return M.Rlock(m.tag, C.LOCK_SUCCESS)
    return s.park(req, lambda: s.locks.cancel(w))


def t_getlock(s, m, req):
    e = s.fids.get(m.fid)
    key = _lock_key(s, m.fid, e)
    lk = s.locks.test(key, (m.client_id, m.proc_id), m.type, m.start, m.length, opener=_lock_opener(s, m.fid, e))
    if lk is None:
        return M.Rgetlock(m.tag, C.LOCK_TYPE_UNLCK, m.start, m.length, m.proc_id, m.client_id)
    length = 0 if lk.end >= INF else lk.end - lk.start
    return M.Rgetlock(m.tag, lk.type, lk.start, length, lk.owner[1], lk.owner[0])
