"""Re-running a request a killed worker had started: make non-idempotent operations come out as if applied once.

Only the resume path uses this (a STARTED journal record whose effect may or may not have happened).
"""
from __future__ import annotations

import errno
import os
import stat

from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M

from .fids import FID_PATH


def _join(path: bytes, name: bytes) -> bytes:
    return name if not path else path + b"/" + name


class ResumeFixup:
    """prepare(msg) before the re-run; translate(reply) after it.

    The predecessor may have applied the operation and died before recording the reply.
    Fid-table effects are undone before re-running (the re-run then gives the same answer);
    host effects that cannot be undone are recognised by the error a second application gives.
    """

    def __init__(self, session) -> None:
        self.s = session

    def prepare(self, frame):
        """Returns the frame to run (maybe rewritten), or a ready reply (bytes) to send instead."""
        try:
            msg = M.decode(bytes(frame))
        except Exception:
            return frame
        fids = self.s.fids
        t = type(msg)
        if t in (M.Twalk, M.Txattrwalk) and msg.newfid != msg.fid:
            self._forget(msg.newfid)
        elif t is M.Tattach:
            self._forget(msg.fid)
        elif t in (M.Tclunk, M.Tremove):
            if not self._exists(msg.fid):
                return M.encode(M.Rclunk(msg.tag) if t is M.Tclunk else M.Rremove(msg.tag))
        elif t in (M.Tlopen, M.Txattrcreate):
            self._back_to_path(msg.fid)
        elif t is M.Tlcreate:
            try:
                e = fids.get(msg.fid)
            except OSError:
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
        if not isinstance(reply, (bytes, bytearray)) or len(reply) < 11 or reply[4] != M.Rlerror.TYPE:
            return reply
        ecode = int.from_bytes(reply[7:11], "little")
        try:
            msg = M.decode(bytes(frame))
        except Exception:
            return reply
        t = type(msg)
        if ecode == errno.ENOENT:
            if t is M.Tunlinkat:
                return M.encode(M.Runlinkat(msg.tag))
            if t is M.Trenameat:
                return M.encode(M.Rrenameat(msg.tag))
            if t is M.Trename:
                return M.encode(M.Rrename(msg.tag))
        if ecode == errno.EEXIST:
            if t is M.Tlink:
                return M.encode(M.Rlink(msg.tag))
            if t in (M.Tmkdir, M.Tsymlink, M.Tmknod):
                qid = self._qid(msg.dfid if t is not M.Tsymlink else msg.fid, os.fsencode(msg.name))
                if qid is not None:
                    return M.encode({M.Tmkdir: M.Rmkdir, M.Tsymlink: M.Rsymlink, M.Tmknod: M.Rmknod}[t](msg.tag, qid))
        return reply

    # -- helpers -------------------------------------------------------------------

    def _exists(self, fid: int) -> bool:
        try:
            self.s.fids.get(fid)
            return True
        except OSError:
            return False

    def _forget(self, fid: int) -> None:
        try:
            self.s.fids.remove(fid)
        except OSError:
            pass

    def _back_to_path(self, fid: int) -> None:
        try:
            e = self.s.fids.get(fid)
        except OSError:
            return
        if e.kind != FID_PATH:
            self.s.fids.update(fid, e.copy(kind=FID_PATH, open_flags=-1, holder_pid=0, holder_fd=-1,
                                           xattr_name=b"", xattr_size=0, xattr_flags=0, xattr_value=b""))

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
