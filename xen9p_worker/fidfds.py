"""From a fid's plain-data entry to this process's fds, and the clunk that gives them back.

Shared by every handler module; nothing here knows 9P message types.
"""
from __future__ import annotations

import errno
import os

from xen9p_common.p9 import messages as M

from .backend.hostops import reopen
from .fdcache import ROLE_OPEN, ROLE_PATH
from .fids import FID_DIR, FID_FILE, FID_PATH, FidEntry


def fs(name: str) -> bytes:
    return os.fsencode(name)


def path_slot(s, fid: int, e: FidEntry):
    return s.fds.acquire((fid, e.generation, ROLE_PATH), lambda: s.backend.walk(e.path))


def open_slot(s, fid: int, e: FidEntry):
    def opener():
        flags = e.open_flags & ~(os.O_TRUNC | os.O_CREAT | os.O_EXCL)  # those were for the first open
        if e.holder_pid and e.holder_pid != s.pid and e.holder_fd >= 0:
            fd = _from_holder(s, e, flags)
            if fd >= 0:
                return fd
        pfd = s.backend.walk(e.path)
        try:
            st = os.fstat(pfd)
            if e.qid is not None and s.backend.qidmap.path(st.st_dev, st.st_ino) != e.qid.path:
                # Its fd was reclaimed (fdcache) and the name now names another file.
                raise OSError(errno.ESTALE, "the open file's name now names another file")
            return reopen(pfd, flags, st)
        finally:
            os.close(pfd)
    return s.fds.acquire((fid, e.generation, ROLE_OPEN), opener, evictable=False)


def pin_open_files(s, rel: bytes) -> None:
    """Before the name `rel` goes (unlink, rename over it): every fid open on that file gets an fd
    in this process that is never reclaimed, and this process becomes its holder.

    Only needed once some fd of an open fid was reclaimed under host fd pressure: until then each
    open fid's holder keeps its fd, and an unlinked file's fd is never reclaimed.
    """
    if not s.fids.reclaimed():
        return
    for fid, e in s.fids.open_files_at(rel):
        try:
            slot = open_slot(s, fid, e)
        except OSError:
            continue  # gone already, or not that file any more: nothing to keep
        try:
            s.fds.pin((fid, e.generation, ROLE_OPEN))
            if e.holder_pid != s.pid or e.holder_fd != slot.fd:
                s.fids.update(fid, e.copy(holder_pid=s.pid, holder_fd=slot.fd))
        except OSError:
            pass  # clunked meanwhile
        finally:
            s.fds.release(slot)


def _from_holder(s, e: FidEntry, flags: int) -> int:
    """The hook for workers sharing a fid table: reach the holder's (maybe unlinked) file.

    The holder may have died and its pid or fd number been reused, so the object is
    checked through an O_PATH fd (no open side effects) against the fid's qid first.
    Returns -1 when it is not the fid's file.
    """
    try:
        pfd = os.open(f"/proc/{e.holder_pid}/fd/{e.holder_fd}", os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        st = os.fstat(pfd)
        if s.backend.qidmap.path(st.st_dev, st.st_ino) != e.qid.path:
            return -1
        return reopen(pfd, flags, st)
    finally:
        os.close(pfd)


def any_slot(s, fid: int, e: FidEntry):
    """The open fd of an open fid (open-then-unlink keeps working), else its O_PATH fd."""
    if e.kind == FID_FILE or e.kind == FID_DIR:
        return open_slot(s, fid, e)
    return path_slot(s, fid, e)


def drop_fds(s, fid: int, e: FidEntry) -> None:
    s.fds.drop((fid, e.generation, ROLE_PATH))
    s.fds.drop((fid, e.generation, ROLE_OPEN))


def path_entry(s, fid: int, kinds=(FID_PATH,)) -> FidEntry:
    e = s.fids.get(fid)
    if e.kind not in kinds:
        raise OSError(errno.EINVAL, "wrong kind of fid")
    return e


def iounit(s, blksize: int = 0) -> int:
    """The largest multiple of `blksize` (default: the export's) that fits one Tread/Twrite.

    Also what Rgetattr reports as st_blksize (as QEMU does): Linux copies it into stat(), and
    stdio and cp size their buffers from it, so guest programs issue whole-msize requests.
    """
    bs = blksize or s.backend.blksize
    n = (s.msize - M.IOHDRSZ) // bs * bs
    return n or s.msize - M.IOHDRSZ


def statfs_scale(s, f_bsize: int) -> int:
    """How many host blocks make one Rstatfs block: the iounit's worth (QEMU scales the same way)."""
    return max(1, iounit(s, f_bsize) // f_bsize) if f_bsize > 0 else 1


def clunk_all(s) -> None:
    for fid, e in s.fids.clear():
        release(s, fid, e)
    s.fds.clear()


def release(s, fid: int, e: FidEntry) -> None:
    key = s.lock_keys.pop(fid, None)
    if key is not None:
        s.locks.release_fid(key, fid)
    drop_fds(s, fid, e)

