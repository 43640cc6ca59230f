"""Re-running a request a killed worker had started: make non-idempotent operations come out as if applied once.

Only the resume path uses this (a STARTED journal record whose effect may or may not have happened).
"""
from __future__ import annotations

import errno
import logging
import os
import stat

from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M

from .backend.hostops import reopen
from .fidfds import open_slot, path_slot, release
from .fids import FID_DIR, FID_FILE, FID_PATH, FID_XATTR_WRITE
from .handlers_create import adopt
from .handlers_u import renamed_by_wstat

log = logging.getLogger("xen9p.ring")


def _join(path: bytes, name: bytes) -> bytes:
    return name if not path else path + b"/" + name


def _whole(frame) -> bytes:
    """A request frame as bytes (a Twrite over the ring's end arrives as two views)."""
    return b"".join(bytes(v) for v in frame) if isinstance(frame, list) else bytes(frame)


def _found_past(fd: int, data: bytes, since: int) -> bool:
    """Is `data` somewhere in the file at or past offset `since`?"""
    chunk = max(1 << 20, 2 * len(data))
    pos, tail = since, b""
    while True:
        buf = os.pread(fd, chunk, pos)
        if not buf:
            return False
        hay = tail + buf
        if data in hay:
            return True
        tail = hay[len(hay) - len(data) + 1:] if len(data) > 1 else b""
        pos += len(buf)


class ResumeFixup:
    """prepare(msg) before the re-run; translate(reply) after it.

    The predecessor may have applied the operation and died before recording the reply.
    Fid-table effects are undone before re-running (the re-run then gives the same answer);
    host effects that cannot be undone are recognised by the error a second application gives.
    """

    def __init__(self, session) -> None:
        self.s = session

    def prepare(self, frame, note: int = 0):
        """Returns the frame to run (maybe rewritten), or a ready reply (bytes) to send instead.

        `note` is what the predecessor's handler noted in the journal record before its host
        call (0: nothing; see journal.RingJournal.note).
        """
        try:
            msg = M.decode(_whole(frame))
        except Exception:
            return frame
        fids = self.s.fids
        t = type(msg)
        if t is M.Twrite:
            if (note and self._appended(msg, note - 1)) or self._xattr_written(msg):
                return M.encode(M.Rwrite(msg.tag, len(msg.data)))
        elif t in (M.Twalk, M.Txattrwalk) and msg.newfid != msg.fid:
            self._forget(msg.newfid)
        elif t is M.Tattach:
            self._forget(msg.fid)
        elif t in (M.Tclunk, M.Tremove):
            e = self._entry(msg.fid)
            if e is None:
                return M.encode(M.Rclunk(msg.tag) if t is M.Tclunk else M.Rremove(msg.tag))
            if t is M.Tclunk and self._xattr_applied(msg.fid, e):
                release(self.s, msg.fid, fids.remove(msg.fid))
                return M.encode(M.Rclunk(msg.tag))
        elif t in (M.Tlopen, M.Txattrcreate, M.Topen):
            self._back_to_path(msg.fid)
        elif t is M.Tcreate:
            self._uncreate(msg)
        elif t is M.Tlcreate:
            e = self._entry(msg.fid)
            if e is None:
                return frame
            name = os.fsencode(msg.name)
            if e.kind != FID_PATH and (e.path == name or e.path.endswith(b"/" + name)):
                parent = e.path[:-len(name)].rstrip(b"/")
                fids.update(msg.fid, e.copy(kind=FID_PATH, path=parent, open_flags=-1,
                                            holder_pid=0, holder_fd=-1))
                # The file is ours already (nothing wrote to it before the reply): open, not create.
                msg = M.Tlcreate(msg.tag, msg.fid, msg.name, msg.flags & ~C.L_O_EXCL, msg.mode, msg.gid)
                return M.encode(msg)
            if e.kind == FID_PATH and msg.flags & C.L_O_EXCL and self._is_file(_join(e.path, name)):
                # Created on the host, then killed before the fid was updated: a second O_EXCL create
                # would answer EEXIST (found by the kill storm). Open it instead, as a re-run Tmkdir
                # answers with the existing directory's qid.
                return M.encode(M.Tlcreate(msg.tag, msg.fid, msg.name, msg.flags & ~C.L_O_EXCL, msg.mode, msg.gid))
        return frame

    def translate(self, frame, reply):
        """The reply to send for the re-run, given what it answered."""
        ecode = M.error_code(reply) if isinstance(reply, (bytes, bytearray)) else None
        if ecode is None:
            return reply
        try:
            msg = M.decode(bytes(frame))
        except Exception:
            return reply
        t = type(msg)
        if ecode == errno.ENOENT:
            if t is M.Tunlinkat:
                return M.encode(M.Runlinkat(msg.tag))
            if t is M.Tremove:  # removed, then the worker died before the fid went
                return M.encode(M.Rremove(msg.tag))
            if t is M.Twstat and renamed_by_wstat(self.s, msg):
                return M.encode(M.Rwstat(msg.tag))
            if t is M.Trenameat:
                return M.encode(M.Rrenameat(msg.tag))
            if t is M.Trename:
                return M.encode(M.Rrename(msg.tag))
        if ecode == errno.EEXIST:
            if t is M.Tcreate and msg.perm & C.DM_TYPE_BITS:  # not a regular file (reopened, no EEXIST)
                try:  # made by the predecessor: the fid moves onto it, as the first run would have
                    return M.encode(adopt(self.s, msg, self.s.fids.get(msg.fid), os.fsencode(msg.name)))
                except OSError:
                    return reply
            if t is M.Tlink:
                return M.encode(M.Rlink(msg.tag))
            if t in (M.Tmkdir, M.Tsymlink, M.Tmknod):
                qid = self._qid(msg.dfid if t is not M.Tsymlink else msg.fid, os.fsencode(msg.name))
                if qid is not None:
                    return M.encode({M.Tmkdir: M.Rmkdir, M.Tsymlink: M.Rsymlink, M.Tmknod: M.Rmknod}[t](msg.tag, qid))
        return reply

    # -- helpers -------------------------------------------------------------------

    def _entry(self, fid: int):
        """The fid's entry, or None if there is no such fid."""
        try:
            return self.s.fids.get(fid)
        except OSError:
            return None

    def _xattr_written(self, msg) -> bool:
        """Is this Twrite's chunk of an xattr value already the end of the fid's value? (Chunks
        must arrive in order: a re-run of an applied one would be refused with EINVAL.)"""
        e = self._entry(msg.fid)
        data = bytes(msg.data)
        return (e is not None and e.kind == FID_XATTR_WRITE and bool(data) and msg.offset + len(data) == len(e.xattr_value)
                and e.xattr_value[msg.offset:] == data)

    def _xattr_applied(self, fid: int, e) -> bool:
        """Does the host show the xattr change this Txattrcreate fid (entry e) makes at its clunk,
        where a second application would fail (XATTR_CREATE: EEXIST; a removal: ENODATA)?"""
        if e.kind != FID_XATTR_WRITE or len(e.xattr_value) != e.xattr_size:
            return False
        removal = e.xattr_size == 0 and e.xattr_flags & C.XATTR_REPLACE
        if not removal and not e.xattr_flags & C.XATTR_CREATE:
            return False  # a plain or replacing set: applying it again is harmless
        try:
            slot = path_slot(self.s, fid, e.copy(kind=FID_PATH))
        except OSError:
            return False
        try:
            value = self.s.backend.xattr_get(slot.fd, e.xattr_name)
        except OSError as err:
            return bool(removal) and err.errno == errno.ENODATA
        finally:
            self.s.fds.release(slot)
        return not removal and value == e.xattr_value

    def _appended(self, msg, since: int) -> bool:
        """Did the predecessor append msg.data to its O_APPEND file (then `since` bytes long)?

        Its data lands at or past `since` (other appenders may have gone first), so it is looked
        for there. Data equal to a later append of someone else's reads as ours: that append
        then counts for both (a guest cannot tell them apart either).
        """
        e = self._entry(msg.fid)
        data = bytes(msg.data)
        if e is None or e.kind != FID_FILE or not e.open_flags & os.O_APPEND or not data:
            return False
        try:
            slot = open_slot(self.s, msg.fid, e)
        except OSError:
            return False
        try:
            try:
                return _found_past(slot.fd, data, since)
            except OSError as err:
                if err.errno != errno.EBADF:  # opened write-only: read it through another open
                    raise
            fd = reopen(slot.fd, os.O_RDONLY)
            try:
                return _found_past(fd, data, since)
            finally:
                os.close(fd)
        except OSError as err:
            log.warning("resuming an O_APPEND Twrite (tag %d): cannot read the file back (%s); "
                        "appending it again", msg.tag, err.strerror)
            return False
        finally:
            self.s.fds.release(slot)

    def _forget(self, fid: int) -> None:
        try:
            self.s.fids.remove(fid)
        except OSError:
            pass

    def _uncreate(self, msg) -> None:
        """A Tcreate that moved its fid onto the new object already: back to the directory."""
        e = self._entry(msg.fid)
        if e is None:
            return
        name = os.fsencode(msg.name)
        if not (e.path == name or e.path.endswith(b"/" + name)):
            return
        if msg.perm & C.DMDIR:
            done = e.kind == FID_DIR
        elif e.kind == FID_FILE:
            done = True
        else:  # still the directory, or moved onto the non-directory it made
            try:
                fd = self.s.backend.walk(e.path)
            except OSError:
                return
            try:
                done = not stat.S_ISDIR(os.fstat(fd).st_mode)
            finally:
                os.close(fd)
        if done:
            parent = e.path[:-len(name)].rstrip(b"/")
            self.s.fids.update(msg.fid, e.copy(kind=FID_PATH, path=parent, open_flags=-1, holder_pid=0,
                                               holder_fd=-1, rclose=False))

    def _back_to_path(self, fid: int) -> None:
        e = self._entry(fid)
        if e is not None and e.kind != FID_PATH:
            self.s.fids.update(fid, e.copy(kind=FID_PATH, open_flags=-1, holder_pid=0, holder_fd=-1,
                                           xattr_name=b"", xattr_size=0, xattr_flags=0, xattr_value=b"",
                                           rclose=False, dir_offset=0, dir_cookie=0))

    def _is_file(self, path: bytes) -> bool:
        try:
            fd = self.s.backend.walk(path)
        except OSError:
            return False
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode)
        finally:
            os.close(fd)

    def _qid(self, dfid: int, name: bytes):
        try:
            e = self.s.fids.get(dfid)
            fd = self.s.backend.walk(_join(e.path, name))
        except OSError:
            return None
        try:
            return self.s.backend.qid_at(fd, _join(e.path, name))
        except OSError:
            return None
        finally:
            os.close(fd)
