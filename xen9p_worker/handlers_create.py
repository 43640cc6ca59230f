"""Tcreate (9P2000.u layout, served in both dialects): the fid that names a directory becomes
the new file, directory (opened), symlink, hard link, device, fifo or socket, as QEMU does.

perm's DM* bits pick the kind; the extension carries what the kind needs: a symlink's target,
"<fid>\\n" of the hard link's target, "b|c major minor" of a device. A regular file is created
and opened with Topen's mode (OTRUNC, OEXCL, ORCLOSE apply); one that exists already is opened
(QEMU's rule) unless OEXCL says otherwise.
"""
from __future__ import annotations

import errno
import os
import re
import stat

from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M

from .backend.hostops import reopen
from .backend.local import join
from .fdcache import ROLE_OPEN, ROLE_PATH
from .fidfds import any_slot, fs, iounit, path_entry, path_slot
from .fids import FID_DIR, FID_PATH
from .handlers_io import check_open_limit, t_lcreate, t_lopen
from .quota import quota_for
from .ustat import unix_perm

_DEVICE = re.compile(r"([bc]) ([0-9]{1,10}) ([0-9]{1,10})\s*\Z")
_LINK = re.compile(r"([0-9]{1,10})\n?\Z")


def omode_lflags(mode: int) -> int:
    """A 9P2000.u open mode as the .L open flags the backend takes (OEXEC opens read-only)."""
    acc = mode & C.OACCMODE
    flags = C.L_O_RDWR if acc == C.ORDWR else C.L_O_WRONLY if acc == C.OWRITE else C.L_O_RDONLY
    if mode & C.OTRUNC:
        flags |= C.L_O_TRUNC
    if mode & C.OAPPEND:
        flags |= C.L_O_APPEND
    if mode & C.OEXCL:
        flags |= C.L_O_EXCL
    return flags


def _parse(m, s):
    """Check the extension of a special kind before anything changes: (kind, argument)."""
    perm = m.perm
    if perm & C.DMDIR:
        return "dir", None
    if perm & C.DMSYMLINK:
        return "symlink", fs(m.extension)
    if perm & C.DMLINK:
        mt = _LINK.match(m.extension)
        if not mt:
            raise OSError(errno.EINVAL, "hard link extension is not <fid>\\n")
        tfid = int(mt.group(1))
        te = s.fids.get(tfid) if tfid != M.NOFID else None  # ENOENT: not a fid of this session
        if te is None:
            raise OSError(errno.EINVAL, "no such fid to link to")
        return "link", (tfid, te)
    if perm & C.DMDEVICE:
        mt = _DEVICE.match(m.extension)
        if not mt:
            raise OSError(errno.EINVAL, "device extension is not 'b|c major minor'")
        kind = stat.S_IFCHR if mt.group(1) == "c" else stat.S_IFBLK
        major, minor = int(mt.group(2)), int(mt.group(3))
        if major > 0xFFFFFFFF or minor > 0xFFFFFFFF:
            raise OSError(errno.EINVAL, "device number out of range")
        return "node", (kind, os.makedev(major, minor))
    if perm & C.DMNAMEDPIPE:
        return "node", (stat.S_IFIFO, 0)
    if perm & C.DMSOCKET:
        return "node", (stat.S_IFSOCK, 0)
    return "file", None


def t_create(s, m, req):
    e = path_entry(s, m.fid)
    name = s.backend.check_new_name(fs(m.name))
    try:
        kind, arg = _parse(m, s)
    except OSError as err:
        if err.errno == errno.ENOENT:  # the DMLINK fid is unknown here
            raise OSError(errno.EINVAL, "no such fid to link to") from None
        raise
    if kind == "file":
        flags = omode_lflags(m.mode)
        try:
            # Exclusive first: a file that exists is only opened, its owner and mode untouched
            # (and never removed when giving it the creator's owner fails).
            r = t_lcreate(s, M.Tlcreate(m.tag, m.fid, m.name, flags | C.L_O_CREAT | C.L_O_EXCL,
                                        unix_perm(m.perm), -1), req)
        except FileExistsError:
            if m.mode & C.OEXCL:
                raise
            r = _open_existing(s, m, e, name, flags, req)
        if m.mode & C.ORCLOSE:
            s.fids.update(m.fid, s.fids.get(m.fid).copy(rclose=True))
        return M.Rcreate(m.tag, r.qid, r.iounit)
    if kind == "dir":
        check_open_limit(s)
    quota_for(s).admit_files(1)
    be = s.backend
    perm = unix_perm(m.perm) if kind == "dir" else m.perm & 0o777
    slot = path_slot(s, m.fid, e)
    try:
        dirfd = slot.fd
        if kind == "dir":
            be.mkdir(dirfd, name, perm, e.uid, -1)
        elif kind == "symlink":
            be.symlink(dirfd, name, arg, e.uid, -1)
        elif kind == "link":
            tfid, te = arg
            tslot = any_slot(s, tfid, te)
            try:
                be.link(tslot.fd, dirfd, name)
            finally:
                s.fds.release(tslot)
        else:
            be.mknod(dirfd, name, arg[0] | perm, arg[1], e.uid, -1)
    finally:
        s.fds.release(slot)
    return adopt(s, m, e, name)


def _open_existing(s, m, e, name: bytes, flags: int, req):
    """Tcreate of a name that exists: the fid opens it, as QEMU's create without OEXCL does."""
    rel = join(e.path, name)
    pfd = s.backend.walk(rel)
    try:
        if stat.S_ISDIR(os.fstat(pfd).st_mode):
            raise OSError(errno.EISDIR, "a directory of that name exists")
        qid = s.backend.qid_at(pfd, rel)
    finally:
        os.close(pfd)
    s.fids.update(m.fid, e.copy(path=rel, qid=qid))
    s.fds.drop((m.fid, e.generation, ROLE_PATH))  # that was the directory's
    try:
        return t_lopen(s, M.Tlopen(m.tag, m.fid, flags), req)
    except BaseException:
        s.fids.update(m.fid, e)
        s.fds.drop((m.fid, e.generation, ROLE_PATH))
        raise


def adopt(s, m, e, name: bytes):
    """Make fid name the new object `name` in its directory (opened if a directory): Rcreate.

    Also what a resumed Tcreate does when its re-run finds the object made (EEXIST).
    """
    be = s.backend
    rel = join(e.path, name)
    pfd = be.walk(rel)
    try:
        st = os.fstat(pfd)
        qid = be.qid_at(pfd, rel)
        if stat.S_ISDIR(st.st_mode) and m.perm & C.DMDIR:
            fd = reopen(pfd, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, st)
            ne = e.copy(kind=FID_DIR, path=rel, qid=qid, open_flags=os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                        holder_pid=s.pid, holder_fd=fd, rclose=bool(m.mode & C.ORCLOSE),
                        dir_offset=0, dir_cookie=0)
            role = ROLE_OPEN
            os.close(pfd)
        else:
            fd, ne, role = pfd, e.copy(kind=FID_PATH, path=rel, qid=qid), ROLE_PATH
    except BaseException:
        os.close(pfd)
        raise
    try:
        s.fids.update(m.fid, ne)
    except BaseException:
        os.close(fd)
        raise
    s.fds.drop((m.fid, e.generation, ROLE_PATH))  # that was the directory's
    s.fds.put((m.fid, ne.generation, role), fd, evictable=role == ROLE_PATH)
    return M.Rcreate(m.tag, qid, iounit(s))

