"""The 9P2000.u handlers — Topen, Tread of a directory (whole stat records), Tstat, Twstat —
and the .u dispatch table: what both dialects share comes from handlers.TABLE.

A .u session serves no .L-only message (they get Rerror EOPNOTSUPP, as unknown types do).
"""
from __future__ import annotations

import errno
import os
import stat

from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M
from xen9p_common.p9.stat import DONT_TOUCH_U32, DONT_TOUCH_U64, STAT_DONT_TOUCH

from . import handlers, ustat
from .backend.local import join
from .fidfds import any_slot, fs, open_slot
from .fids import FID_DIR, FID_FILE, FID_XATTR_READ, FID_XATTR_WRITE
from .handlers_create import omode_lflags, t_create
from .handlers_io import _to_pool, t_lopen, t_read
from .handlers_ns import _rename
from .quota import quota_for


def t_open(s, m, req):
    if m.mode & C.ORCLOSE:
        s.backend.check_writable()  # the clunk removes the file: refused on a read-only export now
    r = t_lopen(s, M.Tlopen(m.tag, m.fid, omode_lflags(m.mode & ~C.OEXCL)), req)
    if m.mode & C.ORCLOSE:
        s.fids.update(m.fid, s.fids.get(m.fid).copy(rclose=True))
    return M.Ropen(m.tag, r.qid, r.iounit)


def t_read_u(s, m, req):
    e = s.fids.get(m.fid)
    if e.kind != FID_DIR:
        return t_read(s, m, req)
    if type(m) in s.inline_ops:  # many stat calls: not on the transport's thread
        return _to_pool(s, req, lambda s, m, req: _read_dir(s, m))
    return _read_dir(s, m)


def _read_dir(s, m):
    e = s.fids.get(m.fid)
    if e.kind != FID_DIR:
        raise OSError(errno.EBADF, "fid not an open directory")
    count = min(m.count, s.msize - M.HEADER_SIZE - 4)
    be = s.backend
    slot = open_slot(s, m.fid, e)
    try:
        cookie = ustat.cookie_at(be, slot.fd, e.path, m.offset, (e.dir_offset, e.dir_cookie))
        data, cookie = ustat.read_dir(be, slot.fd, e.path, cookie, count)
    finally:
        s.fds.release(slot)
    s.fids.update(m.fid, e.copy(dir_offset=m.offset + len(data), dir_cookie=cookie))
    return M.Rread(m.tag, data)


def _fid_fd(s, fid: int):
    e = s.fids.get(fid)
    if e.kind in (FID_XATTR_READ, FID_XATTR_WRITE):
        raise OSError(errno.EINVAL, "stat of an xattr fid")
    return e, any_slot(s, fid, e)


def t_stat(s, m, req):
    e, slot = _fid_fd(s, m.fid)
    try:
        rec = ustat.record(s.backend, slot.fd, e.path, ustat.name_of(e.path))
    finally:
        s.fds.release(slot)
    return M.Rstat(m.tag, rec)


def t_wstat(s, m, req):
    """QEMU's Twstat: every field may be "don't touch"; all of them so means fsync. Everything
    is checked before anything changes; then length, mode, times, owner, and the rename last."""
    st = m.stat
    e, slot = _fid_fd(s, m.fid)
    try:
        fd = slot.fd
        if st == STAT_DONT_TOUCH:
            if e.kind in (FID_FILE, FID_DIR):
                os.fsync(fd)
            return M.Rwstat(m.tag)
        be = s.backend
        hst, mode, _, _, _ = be.attr(fd, e.path)
        valid = 0
        if st.mode != DONT_TOUCH_U32:
            if (st.mode ^ ustat.v9_mode(mode)) & C.DM_TYPE_BITS:
                raise OSError(errno.EINVAL, "Twstat may not change the file type")
            valid |= C.SETATTR_MODE
        newname = fs(st.name) if st.name else b""
        oldname = ustat.name_of(e.path)
        if newname and newname != oldname:
            if not e.path:
                raise OSError(errno.EBUSY, "cannot rename the export root")
            be.check_new_name(newname)
        if st.atime != DONT_TOUCH_U32:
            valid |= C.SETATTR_ATIME | C.SETATTR_ATIME_SET
        if st.mtime != DONT_TOUCH_U32:
            valid |= C.SETATTR_MTIME | C.SETATTR_MTIME_SET
        if st.n_uid != DONT_TOUCH_U32:
            valid |= C.SETATTR_UID
        if st.n_gid != DONT_TOUCH_U32:
            valid |= C.SETATTR_GID
        if st.length != DONT_TOUCH_U64:
            if stat.S_ISDIR(mode):
                raise OSError(errno.EISDIR, "truncate of a directory")
            if not stat.S_ISREG(mode):
                raise OSError(errno.EINVAL, "truncate of a non-regular file")
            if st.length > hst.st_size:
                quota_for(s).admit_space(st.length - hst.st_size)  # max-space (auto-delete may make room)
            valid |= C.SETATTR_SIZE
        # The length first (QEMU truncates last, which moves the mtime just set): times given win.
        for part in (valid & C.SETATTR_SIZE, valid & ~C.SETATTR_SIZE):
            if part:
                be.setattr(fd, e.path, part, ustat.unix_perm(st.mode), st.n_uid, st.n_gid, st.length,
                           (st.atime, 0), (st.mtime, 0))
    finally:
        s.fds.release(slot)
    if newname and newname != oldname:
        head = e.path.rpartition(b"/")[0]
        dfd = s.backend.walk(head)
        try:
            _rename(s, dfd, head, oldname, dfd, head, newname)
        finally:
            os.close(dfd)
    return M.Rwstat(m.tag)


def renamed_by_wstat(s, msg) -> bool:
    """For a resumed Twstat whose rename found its old name gone: did the rename happen (the new
    name is there)? Then the fid paths are moved as the predecessor would have done."""
    try:
        e = s.fids.get(msg.fid)
    except OSError:
        return False
    if not msg.stat.name or not e.path:
        return False
    head, _, old = e.path.rpartition(b"/")
    new = fs(msg.stat.name)
    try:
        fd = s.backend.walk(join(head, new))
    except OSError:
        return False
    os.close(fd)
    s.fids.rename_subtree(join(head, old), join(head, new))
    return True


# .L-only requests are not served in a .u session; Tflush is dispatch's own.
_L_ONLY = {cls for cls in handlers.TABLE if cls.TYPE < M.Tversion.TYPE}
TABLE_U = {cls: fn for cls, fn in handlers.TABLE.items() if cls not in _L_ONLY}
TABLE_U.update({M.Topen: t_open, M.Tcreate: t_create, M.Tread: t_read_u, M.Tstat: t_stat, M.Twstat: t_wstat})
