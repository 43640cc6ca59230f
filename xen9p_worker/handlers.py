"""One function per 9P2000.L request: fid table + backend in, reply out. This module:
session, walk and attributes, plus the .L dispatch table of every handler module
(the 9P2000.u table: handlers_u.py).

Dispatch owns threads, tags and flushes; handlers own 9P semantics. Each takes
(session, msg, req) and returns a message, raw reply bytes or length, or PENDING.
"""
from __future__ import annotations

import errno
import logging
import os
import struct

from xen9p_common.p9 import messages as M
from xen9p_common.p9 import constants as C

from .fdcache import ROLE_PATH
from .fidfds import (any_slot, clunk_all, drop_fds, fs, iounit, path_entry, path_slot, release,  # noqa: F401
                     statfs_scale)
from .fids import FID_PATH, FID_XATTR_READ, FID_XATTR_WRITE, FidEntry
from .handlers_create import t_create
from .handlers_io import t_fsync, t_lcreate, t_lopen, t_read, t_readdir, t_write
from .handlers_ns import (apply_xattr, remove_entry, t_getlock, t_link, t_lock, t_mkdir, t_mknod, t_remove, t_rename,
                          t_renameat, t_symlink, t_unlinkat, t_xattrcreate, t_xattrwalk)

log = logging.getLogger("xen9p.handlers")
PENDING = object()  # the handler will call session.finish() later
V9FS_MAGIC = 0x01021997
NONUNAME = 0xFFFFFFFF
_RGETATTR = struct.Struct("<IBHQBIQIIIQQQQQ" + "Q" * 10)  # header + every Rgetattr field, in order


# -- session -------------------------------------------------------------------

def negotiate(version: str) -> str:
    """The dialect answered: "9P2000.L" (and its suffixed forms), exactly "9P2000.u", or "unknown"."""
    if version.startswith(C.VERSION_9P2000L):
        return C.VERSION_9P2000L
    if version == C.VERSION_9P2000U:
        return C.VERSION_9P2000U
    return "unknown"


def t_version(s, m, req):
    if m.msize < C.MIN_MSIZE:
        raise OSError(errno.EINVAL, "msize below 4096")
    version = negotiate(m.version)
    msize = min(m.msize, s.server.msize_cap)
    st = s.state
    if version == C.VERSION_9P2000U == st.version and msize == st.msize and s.fids.count():
        # Deliberate departure from the 9P spec (which resets the session): a repeated Tversion
        # with the same version and msize on an attached 9P2000.u session keeps every fid.
        # Mini-OS re-initialises so after a kexec (Xenstore-stubdom live update) and goes on
        # using fid 0 without a Tattach; xen-9pfsd, its usual server, never resets on Tversion.
        return M.Rversion(m.tag, msize, version)
    s.new_session(msize, version)
    return M.Rversion(m.tag, msize, version)


def t_auth(s, m, req):
    raise OSError(errno.EOPNOTSUPP, "no authentication")


def t_attach(s, m, req):
    # No authentication is offered (Tauth fails), so afid is ignored whatever it says, as QEMU and
    # xen-9pfsd do: Mini-OS attaches with afid 0.
    uid = m.n_uname if m.n_uname != NONUNAME else 0
    qid = s.backend.qid_at(s.backend.root_fd, b"")
    s.fids.add(m.fid, FidEntry(FID_PATH, b"", qid, uid))
    return M.Rattach(m.tag, qid)



def t_clunk(s, m, req):
    e = s.fids.get(m.fid)
    if e.rclose:
        # Opened with ORCLOSE: the file goes before the fid (a re-run after a crash finds the fid
        # and nothing to remove). A failed removal does not fail the clunk.
        try:
            remove_entry(s, m.fid, e)
        except OSError as err:
            log.debug("ORCLOSE removal of fid %d failed: %s", m.fid, err)
    try:
        if e.kind == FID_XATTR_WRITE:
            # Applied while the fid still holds the value: a worker killed in between leaves the
            # fid to its successor, which sees whether the host has the change (ring_resume).
            apply_xattr(s, m.fid, e)
    finally:
        release(s, m.fid, s.fids.remove(m.fid))  # the fid goes whatever the outcome
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
            name = fs(wname)
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
            drop_fds(s, m.fid, e)
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
                          mode, uid, gid, st.st_nlink, rdev, st.st_size, iounit(s, st.st_blksize), st.st_blocks,
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
    k = statfs_scale(s, v.f_bsize)
    return M.Rstatfs(m.tag, V9FS_MAGIC, v.f_bsize * k, v.f_blocks // k, v.f_bfree // k, v.f_bavail // k,
                     v.f_files, v.f_ffree, 0, v.f_namemax)


def t_readlink(s, m, req):
    e = path_entry(s, m.fid)
    slot = path_slot(s, m.fid, e)
    try:
        return M.Rreadlink(m.tag, os.fsdecode(s.backend.readlink(slot.fd, e.path)))
    finally:
        s.fds.release(slot)



TABLE = {
    M.Tversion: t_version, M.Tauth: t_auth, M.Tattach: t_attach, M.Twalk: t_walk, M.Tclunk: t_clunk,
    M.Tgetattr: t_getattr, M.Tsetattr: t_setattr, M.Tstatfs: t_statfs, M.Treadlink: t_readlink,
    M.Tlopen: t_lopen, M.Tlcreate: t_lcreate, M.Tread: t_read, M.Twrite: t_write, M.Tfsync: t_fsync,
    M.Treaddir: t_readdir, M.Tmkdir: t_mkdir, M.Tsymlink: t_symlink, M.Tmknod: t_mknod, M.Tlink: t_link,
    M.Trename: t_rename, M.Trenameat: t_renameat, M.Tunlinkat: t_unlinkat, M.Tremove: t_remove,
    M.Txattrwalk: t_xattrwalk, M.Txattrcreate: t_xattrcreate, M.Tlock: t_lock, M.Tgetlock: t_getlock,
}
# Tcreate (.u layout) is accepted in a .L session too: Unikraft makes directories with it, and
# QEMU's core serves it in any dialect. Tremove is in both dialects anyway.
TABLE[M.Tcreate] = t_create

# Served on the caller's thread: metadata calls that do not wait on disk I/O (the namespace
# changes are journal updates, like Twalk's lookups and Tclunk's close). Moving one request to
# the pool costs more than these calls themselves: a queue hop, a thread wakeup, a GIL handoff
# and a loop wakeup for the reply (bench/cost.py: 5 such hops made a file's create+write+unlink
# 3-4x diod's CPU). Data (Tread beyond the page cache, Twrite, Tfsync, Treaddir), Tsetattr (a
# truncate frees blocks) and Tlopen (O_TRUNC) stay on the pool.
# Requests that add a name. With max-files (or auto-delete) they may first walk the whole export
# to count it (quota.py), which must not stall a ring's loop: ring workers serve them on the pool then.
ADDS_NAMES = frozenset({M.Tlcreate, M.Tmkdir, M.Tsymlink, M.Tlink, M.Tmknod})
# The namespace changes served inline; each answers before its handler returns.
NAMESPACE = ADDS_NAMES | {M.Trename, M.Trenameat, M.Tunlinkat, M.Tremove}
INLINE = frozenset({M.Tversion, M.Tauth, M.Tattach, M.Twalk, M.Tclunk, M.Tgetattr, M.Tstatfs,
                    M.Treadlink, M.Txattrwalk, M.Txattrcreate, M.Tlock, M.Tgetlock, M.Tstat}) | NAMESPACE
