"""A convenient 9P2000.L file API over RpcClient: fid allocation, walk, open, read,
write, readdir, create, unlink, rename, attributes, xattrs, locks (the 9P2000.u
operations: fs_u.UFidOps).
"""
from __future__ import annotations

import errno
import threading
from typing import Iterator, NamedTuple, Sequence

from xen9p_common.p9 import constants as c
from xen9p_common.p9 import messages as m
from xen9p_common.p9.dirent import Dirent, unpack_dirents
from xen9p_common.p9.wire import MAXWELEM, Qid
from xen9p_sim.client.errors import P9Error
from xen9p_sim.client.fs_u import UFidOps
from xen9p_sim.client.rpc import RpcClient
from xen9p_sim.client.transport import Transport


class Rversion(NamedTuple):
    msize: int
    version: str


def split_path(path: str | Sequence[str]) -> list[str]:
    """'a/b//c' -> ['a', 'b', 'c']; a list or tuple is taken as the names themselves."""
    if isinstance(path, str):
        return [p for p in path.split("/") if p]
    return list(path)


class Client(RpcClient):
    """9P2000.L client: `version()`, `attach()` -> Fid, then everything on Fid objects."""

    def __init__(self, transport: Transport, timeout: float = 30.0, name: str = "9p") -> None:
        super().__init__(transport, timeout, name)
        self._fid_lock = threading.Lock()
        self._fids: dict[int, "Fid"] = {}
        self._next_fid = 1
        self.version_string = ""

    # --- session -----------------------------------------------------------

    def version(self, msize: int = 65536, version: str = c.VERSION_9P2000L, *, notag: bool = True,
                keep_fids: bool = False) -> Rversion:
        """Tversion; the server clunks every fid, so every Fid object becomes stale.

        notag=False sends it under an ordinary tag (as Mini-OS does); keep_fids=True keeps
        the Fid objects (a .u live-update re-init, which xen9p answers without a reset).
        """
        if notag:
            r = self.rpc(m.Tversion, msize, version)
        else:
            r = self.wait(self.rpc_tagged_async(m.Tversion, msize, version))
        if not keep_fids:
            with self._fid_lock:
                for f in self._fids.values():
                    f.fid_valid = False
                self._fids.clear()
        self.msize = r.msize
        self.version_string = r.version
        return Rversion(r.msize, r.version)

    def attach(self, aname: str = "", uname: str = "root", n_uname: int = 0, afid: int = m.NOFID) -> "Fid":
        fid = self.new_fid()
        try:
            r = self.rpc(m.Tattach, fid.fid, afid, uname, aname, n_uname)
        except BaseException:
            fid.forget()
            raise
        fid.qid = r.qid
        return fid

    # --- fid numbers -------------------------------------------------------

    def new_fid(self) -> "Fid":
        """Reserve a fid number (no message is sent)."""
        with self._fid_lock:
            while self._next_fid in self._fids or self._next_fid == m.NOFID:
                self._next_fid = (self._next_fid + 1) & 0xFFFFFFFF
            f = Fid(self, self._next_fid)
            self._fids[f.fid] = f
            self._next_fid = (self._next_fid + 1) & 0xFFFFFFFF
            return f

    def _release(self, f: "Fid") -> None:
        with self._fid_lock:
            if self._fids.get(f.fid) is f:
                del self._fids[f.fid]
        f.fid_valid = False

    def live_fids(self) -> int:
        with self._fid_lock:
            return len(self._fids)

    @property
    def iosize(self) -> int:
        """Largest Tread count / Twrite payload that fits in msize."""
        return self.msize - m.IOHDRSZ

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Stat(NamedTuple):
    """Rgetattr without the tag."""

    valid: int
    qid: Qid
    mode: int
    uid: int
    gid: int
    nlink: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int
    ctime_sec: int
    ctime_nsec: int
    btime_sec: int
    btime_nsec: int
    gen: int
    data_version: int


class Fid(UFidOps):
    """One fid on the server. Clunked by close() / a `with` block.

    Directory operations (create, mkdir, unlinkat, ...) are called on the
    directory's Fid; file operations on an opened Fid.
    """

    def __init__(self, client: Client, fid: int) -> None:
        self.client = client
        self.fid = fid
        self.qid: Qid | None = None
        self.iounit = 0
        self.opened = False
        self.fid_valid = True

    def __repr__(self) -> str:
        return f"Fid({self.fid}, qid={self.qid}, opened={self.opened})"

    def _rpc(self, cls, *args, **kw):
        return self.client.rpc(cls, *args, **kw)

    def forget(self) -> None:
        """Drop the fid number locally without a message (the server never made it)."""
        self.client._release(self)

    # --- lifetime ----------------------------------------------------------

    def clunk(self) -> None:
        if not self.fid_valid:
            return
        try:
            self._rpc(m.Tclunk, self.fid)
        finally:
            # The fid is gone on the server even when Tclunk fails.
            self.client._release(self)

    close = clunk

    def remove(self) -> None:
        """Tremove: removes the file and clunks the fid, even when the removal fails."""
        try:
            self._rpc(m.Tremove, self.fid)
        finally:
            self.client._release(self)

    def __enter__(self) -> "Fid":
        return self

    def __exit__(self, *exc) -> None:
        if self.fid_valid and not self.client.closed:
            self.clunk()

    # --- walking -----------------------------------------------------------

    def walk_raw(self, names: Sequence[str], newfid: "Fid | None" = None) -> tuple[Qid, ...]:
        """One Twalk (at most 16 names) into `newfid`; returns the wqids as the server
        sent them. On partial success the caller must treat newfid as unset."""
        target = newfid if newfid is not None else self
        return self._rpc(m.Twalk, self.fid, target.fid, tuple(names)).wqids

    def walk(self, path: str | Sequence[str] = ()) -> "Fid":
        """Walk to `path` into a new Fid (an empty path clones). ENOENT-style errors raise
        P9Error; a partial walk raises P9Error(ENOENT) and leaves no fid behind."""
        names = split_path(path)
        new = self.client.new_fid()
        src = self
        created = False
        try:
            first = True
            while first or names:
                chunk, names = names[:MAXWELEM], names[MAXWELEM:]
                qids = src.walk_raw(chunk, new)
                if len(qids) != len(chunk):
                    raise P9Error(errno.ENOENT, f"walk stopped after {len(qids)} of {len(chunk)} names")
                created = True
                if qids:
                    new.qid = qids[-1]
                elif first:
                    new.qid = self.qid
                src = new
                first = False
        except BaseException:
            if created and not self.client.closed:
                try:
                    new.clunk()
                except Exception:
                    new.forget()
            else:
                new.forget()
            raise
        return new

    clone = walk

    # --- open / create -----------------------------------------------------

    def open(self, flags: int = c.L_O_RDONLY) -> "Fid":
        r = self._rpc(m.Tlopen, self.fid, flags)
        self.qid, self.iounit, self.opened = r.qid, r.iounit, True
        return self

    def create(self, name: str, flags: int = c.L_O_RDWR, mode: int = 0o644, gid: int = 0) -> "Fid":
        """Tlcreate in this directory; returns a new opened Fid (this one stays the dir)."""
        f = self.walk()
        try:
            r = self._rpc(m.Tlcreate, f.fid, name, flags, mode, gid)
        except BaseException:
            f.clunk()
            raise
        f.qid, f.iounit, f.opened = r.qid, r.iounit, True
        return f

    def open_path(self, path: str | Sequence[str], flags: int = c.L_O_RDONLY) -> "Fid":
        f = self.walk(path)
        try:
            return f.open(flags)
        except BaseException:
            f.clunk()
            raise

    # --- data --------------------------------------------------------------

    def _chunk(self) -> int:
        n = self.client.iosize
        if self.iounit:
            n = min(n, self.iounit)
        return max(n, 1)

    def read(self, offset: int = 0, count: int | None = None) -> bytes:
        """Read up to `count` bytes (all to EOF if None) in msize-sized Treads."""
        out = bytearray()
        chunk = self._chunk()
        while count is None or len(out) < count:
            want = chunk if count is None else min(chunk, count - len(out))
            data = self._rpc(m.Tread, self.fid, offset + len(out), want).data
            if not data:
                break
            out += data
        return bytes(out)

    def read_once(self, offset: int, count: int) -> bytes:
        return bytes(self._rpc(m.Tread, self.fid, offset, count).data)

    def write(self, data, offset: int = 0) -> int:
        """Write all of `data` in msize-sized Twrites; returns the bytes written."""
        view = memoryview(data)
        done = 0
        chunk = self._chunk()
        while done < len(view) or (done == 0 and len(view) == 0):
            part = view[done:done + chunk]
            n = self._rpc(m.Twrite, self.fid, offset + done, bytes(part)).count
            if n == 0:
                if len(view) == 0:
                    break
                raise P9Error(errno.EIO, "server wrote 0 bytes")
            done += n
        return done

    def readdir_raw(self, offset: int = 0, count: int | None = None) -> list[Dirent]:
        n = count if count is not None else self._chunk()
        return list(unpack_dirents(self._rpc(m.Treaddir, self.fid, offset, n).data))

    def readdir(self, count: int | None = None) -> Iterator[Dirent]:
        """Every entry of an opened directory, over as many Treaddir calls as needed."""
        offset = 0
        while True:
            ents = self.readdir_raw(offset, count)
            if not ents:
                return
            yield from ents
            offset = ents[-1].offset

    def listdir(self) -> list[str]:
        """Names in a directory (walks a clone and opens it), without . and .."""
        with self.walk() as d:
            d.open(c.L_O_RDONLY | c.L_O_DIRECTORY)
            return [e.name for e in d.readdir() if e.name not in (".", "..")]

    def fsync(self, datasync: bool = False) -> None:
        self._rpc(m.Tfsync, self.fid, int(datasync))

    # --- attributes --------------------------------------------------------

    def getattr(self, mask: int = c.GETATTR_BASIC) -> Stat:
        r = self._rpc(m.Tgetattr, self.fid, mask)
        return Stat(*(getattr(r, f) for f in Stat._fields))

    def setattr(self, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                size: int | None = None, atime: tuple[int, int] | None | bool = None,
                mtime: tuple[int, int] | None | bool = None, ctime: bool = False) -> None:
        """Tsetattr of what is given. atime/mtime: (sec, nsec) to set, True for "now"."""
        valid = 0
        if mode is not None:
            valid |= c.SETATTR_MODE
        if uid is not None:
            valid |= c.SETATTR_UID
        if gid is not None:
            valid |= c.SETATTR_GID
        if size is not None:
            valid |= c.SETATTR_SIZE
        at = mt = (0, 0)
        if atime is not None:
            valid |= c.SETATTR_ATIME
            if atime is not True:
                valid |= c.SETATTR_ATIME_SET
                at = atime
        if mtime is not None:
            valid |= c.SETATTR_MTIME
            if mtime is not True:
                valid |= c.SETATTR_MTIME_SET
                mt = mtime
        if ctime:
            valid |= c.SETATTR_CTIME
        self._rpc(m.Tsetattr, self.fid, valid, mode or 0, uid or 0, gid or 0, size or 0,
                  at[0], at[1], mt[0], mt[1])

    def statfs(self) -> m.Rstatfs:
        return self._rpc(m.Tstatfs, self.fid)

    # --- directory operations (self is the directory) -----------------------

    def mkdir(self, name: str, mode: int = 0o755, gid: int = 0) -> Qid:
        return self._rpc(m.Tmkdir, self.fid, name, mode, gid).qid

    def symlink(self, name: str, target: str, gid: int = 0) -> Qid:
        return self._rpc(m.Tsymlink, self.fid, name, target, gid).qid

    def mknod(self, name: str, mode: int, major: int = 0, minor: int = 0, gid: int = 0) -> Qid:
        return self._rpc(m.Tmknod, self.fid, name, mode, major, minor, gid).qid

    def link(self, target: "Fid", name: str) -> None:
        """Hard link `target` as `name` in this directory."""
        self._rpc(m.Tlink, self.fid, target.fid, name)

    def unlinkat(self, name: str, flags: int = 0) -> None:
        self._rpc(m.Tunlinkat, self.fid, name, flags)

    def unlink(self, name: str, flags: int = 0) -> None:
        """Tunlinkat; on EOPNOTSUPP (diod) fall back to walk + Tremove, as Linux does."""
        try:
            self.unlinkat(name, flags)
        except P9Error as e:
            if e.errno != errno.EOPNOTSUPP:
                raise
            self.walk([name]).remove()

    def rmdir(self, name: str) -> None:
        self.unlink(name, c.AT_REMOVEDIR)

    def renameat(self, oldname: str, newdir: "Fid", newname: str) -> None:
        self._rpc(m.Trenameat, self.fid, oldname, newdir.fid, newname)

    def rename(self, oldname: str, newdir: "Fid", newname: str) -> None:
        """Trenameat; on EOPNOTSUPP fall back to walk + Trename, as Linux does."""
        try:
            self.renameat(oldname, newdir, newname)
        except P9Error as e:
            if e.errno != errno.EOPNOTSUPP:
                raise
            with self.walk([oldname]) as f:
                f.rename_fid(newdir, newname)

    def rename_fid(self, newdir: "Fid", newname: str) -> None:
        """Trename: move the file this fid names into newdir as newname."""
        self._rpc(m.Trename, self.fid, newdir.fid, newname)

    def readlink(self) -> str:
        return self._rpc(m.Treadlink, self.fid).target

    # --- xattrs ------------------------------------------------------------

    def xattr_get(self, name: str) -> bytes:
        """Txattrwalk + Treads. name "" lists (NUL-separated names)."""
        x = self.client.new_fid()
        try:
            size = self._rpc(m.Txattrwalk, self.fid, x.fid, name).size
        except BaseException:
            x.forget()
            raise
        with x:
            out = bytearray()
            chunk = self._chunk()
            while len(out) < size:
                data = x.read_once(len(out), min(chunk, size - len(out)))
                if not data:
                    break
                out += data
            return bytes(out)

    def xattr_list(self) -> list[str]:
        raw = self.xattr_get("")
        return [n.decode("utf-8", "surrogateescape") for n in raw.split(b"\0") if n]

    def xattr_set(self, name: str, value: bytes, flags: int = 0) -> None:
        """Txattrcreate on a clone, Twrite the value, and Tclunk (which applies it)."""
        x = self.walk()
        try:
            self._rpc(m.Txattrcreate, x.fid, name, len(value), flags)
            if value:
                x.write(value, 0)
        except BaseException:
            x.clunk()
            raise
        x.clunk()

    def xattr_remove(self, name: str) -> None:
        """An empty Txattrcreate with XATTR_REPLACE removes the attribute (Linux's way)."""
        self.xattr_set(name, b"", c.XATTR_REPLACE)

    # --- locks -------------------------------------------------------------

    def lock(self, type_: int, start: int = 0, length: int = 0, *, proc_id: int = 1,
             client_id: str = "xen9p", flags: int = 0, timeout: float | None = None) -> int:
        """Tlock; returns the status (LOCK_SUCCESS, LOCK_BLOCKED, ...)."""
        return self._rpc(m.Tlock, self.fid, type_, flags, start, length, proc_id, client_id,
                         timeout=timeout).status

    def lock_async(self, type_: int, start: int = 0, length: int = 0, *, proc_id: int = 1,
                   client_id: str = "xen9p", flags: int = 0):
        return self.client.rpc_async(m.Tlock, self.fid, type_, flags, start, length, proc_id, client_id)

    def getlock(self, type_: int, start: int = 0, length: int = 0, *, proc_id: int = 1,
                client_id: str = "xen9p") -> m.Rgetlock:
        return self._rpc(m.Tgetlock, self.fid, type_, start, length, proc_id, client_id)
