"""The 9P2000.u operations of a Fid: Topen, Tcreate (and its extension forms), Tstat,
Twstat, and directory reads as whole stat records. Mixed into fs.Fid.

A Tcreate turns the fid it is sent on into the new, opened file (9P's rule), so
create_u() clones the directory first, as fs.Fid.create() does for Tlcreate.
"""
from __future__ import annotations

from typing import Iterator

from xen9p_common.p9 import constants as c
from xen9p_common.p9 import messages as m
from xen9p_common.p9.stat import STAT_DONT_TOUCH, StatRecord, unpack_stats


class UFidOps:
    """Methods of fs.Fid for a 9P2000.u session (Tcreate also works in .L on xen9p and QEMU)."""

    def open_u(self, mode: int = c.OREAD):
        """Topen with a .u mode (OREAD/OWRITE/ORDWR/OEXEC | OTRUNC | ORCLOSE)."""
        r = self._rpc(m.Topen, self.fid, mode)
        self.qid, self.iounit, self.opened = r.qid, r.iounit, True
        return self

    def create_raw(self, name: str, perm: int, mode: int = c.OREAD, extension: str = "") -> m.Rcreate:
        """Tcreate on this very fid (it becomes the new file); the caller owns the fid's fate."""
        r = self._rpc(m.Tcreate, self.fid, name, perm, mode, extension)
        self.qid, self.iounit, self.opened = r.qid, r.iounit, True
        return r

    def create_u(self, name: str, perm: int = 0o644, mode: int = c.ORDWR, extension: str = ""):
        """Tcreate in this directory on a clone; returns the clone, now the opened new file."""
        f = self.walk()
        try:
            f.create_raw(name, perm, mode, extension)
        except BaseException:
            f.clunk()
            raise
        return f

    def make_u(self, name: str, perm: int, extension: str = "") -> None:
        """Tcreate then Tclunk: a directory, symlink, link, device, fifo or socket."""
        self.create_u(name, perm, c.OREAD, extension).clunk()

    def stat(self) -> StatRecord:
        return self._rpc(m.Tstat, self.fid).stat

    def wstat(self, **changes) -> None:
        """Twstat of the named StatRecord fields; every other field is "don't touch"."""
        self._rpc(m.Twstat, self.fid, STAT_DONT_TOUCH._replace(**changes))

    def read_stats(self, count: int | None = None) -> Iterator[StatRecord]:
        """Every entry of a directory opened with open_u(), read as whole stat records."""
        offset = 0
        n = count if count is not None else self._chunk()
        while True:
            data = self._rpc(m.Tread, self.fid, offset, n).data
            if not data:
                return
            offset += len(data)
            yield from unpack_stats(bytes(data))
