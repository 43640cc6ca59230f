"""Mini-OS 9pfront's 9P2000.u session over a ring transport: synchronous calls on ordinary tags, fid 0 the root.

Its rules, kept here so a test notices a backend that breaks them: Tversion "9P2000.u" must come back exactly so;
a reply must be T+1 or Rerror (anything else, an Rlerror included, is EDOM "wrong return type"); reads ask for at
most msize - 11 bytes and writes carry at most msize - 23.
"""
from __future__ import annotations

import errno
import threading
import time
from dataclasses import dataclass

from xen9p_sim.client.errors import ConnectionClosed, P9Error, RpcTimeout
from xen9p_sim.client.transport import Transport
from xen9p_common.errors import DecodeError
from xen9p_common.p9 import constants as c
from xen9p_common.p9 import messages as m
from xen9p_common.p9.stat import StatRecord
from xen9p_sim.frontend.ring import FrontendError

N_REQS = 64            # Mini-OS's request slots; a tag is a slot number
N_FIDS = 64            # its fid bitmap: fids 1..64, the lowest free one first
ROOT_FID = 0
VERSION = "9P2000.u"
RREAD_OVERHEAD = 11    # size type tag count
TWRITE_OVERHEAD = 23   # size type tag fid offset count


@dataclass
class MiniOSFile:
    fid: int
    path: str
    iounit: int


class MiniOSSession:
    """One kernel's 9P session (a live update ends it and starts another on the same ring).

    Several threads may call at once, each waiting for its own tag, as Mini-OS's threads do.
    """

    def __init__(self, transport: Transport, timeout: float = 30.0, name: str = "minios-9p",
                 fids_in_use: frozenset[int] = frozenset()) -> None:
        self.transport = transport
        self.timeout = timeout
        self.msize = 0
        self.sent: dict[str, int] = {}       # request type name -> count, for tests and the report
        self._cond = threading.Condition()
        self._free = list(range(N_REQS))
        self._replies: dict[int, bytes] = {}
        self._closed: str | None = None
        self._fid_lock = threading.Lock()
        self._fids_in_use = set(fids_in_use)  # a live update hands the new kernel the old one's
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name=f"{name}-reader")
        self._reader.start()

    # -- the call ---------------------------------------------------------------------

    def _read_loop(self) -> None:
        why = "transport closed"
        try:
            while True:
                frame = self.transport.recv_frame()
                if frame is None:
                    break
                try:
                    _, _, tag = m.peek_header(frame)
                except DecodeError:
                    continue
                with self._cond:
                    self._replies[tag] = frame
                    self._cond.notify_all()
        except Exception as e:  # noqa: BLE001 - any reader failure ends the session
            why = f"reader stopped: {e!r}"
        with self._cond:
            self._closed = why
            self._cond.notify_all()

    def _take_tag(self, deadline: float) -> int:
        with self._cond:
            while not self._free:
                if self._closed or not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise ConnectionClosed(self._closed or "no free request slot")
            return self._free.pop(0)

    def _give_back(self, tag: int) -> None:
        with self._cond:
            self._free.append(tag)
            self._cond.notify_all()

    def call(self, cls: type[m.Message], *fields) -> m.Message:
        """Send one request and wait for its reply; Rerror raises P9Error(errno, ename)."""
        deadline = time.monotonic() + self.timeout
        tag = self._take_tag(deadline)
        try:
            frame = m.encode(cls(tag, *fields))
            if self.msize and len(frame) > self.msize:
                raise ValueError(f"{cls.__name__} of {len(frame)} bytes exceeds msize {self.msize}")
            self.sent[cls.__name__] = self.sent.get(cls.__name__, 0) + 1
            self.transport.send(frame)
            with self._cond:
                while tag not in self._replies:
                    if self._closed:
                        raise ConnectionClosed(self._closed)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RpcTimeout(f"no reply to {cls.__name__} (tag {tag}) within {self.timeout} s")
                    self._cond.wait(left)
                raw = self._replies.pop(tag)
        except (RpcTimeout, ConnectionClosed):
            raise  # the slot stays taken: a late reply must never match another request
        except BaseException:
            self._give_back(tag)
            raise
        self._give_back(tag)
        _, rtype, _ = m.peek_header(raw)
        if rtype == m.Rerror.TYPE:
            r = m.decode(raw)
            raise P9Error(r.ecode or errno.EIO, f"{cls.__name__}: {r.ename}")
        if rtype != cls.TYPE + 1:
            raise P9Error(errno.EDOM, f"{cls.__name__}: wrong return type {rtype}")
        return m.decode(raw)

    # -- session --------------------------------------------------------------------

    def version(self, msize: int) -> int:
        """Tversion on an ordinary tag; anything but exactly "9P2000.u" is 9pfront's ENOMSG."""
        r = self.call(m.Tversion, msize, VERSION)
        if r.version != VERSION:
            raise FrontendError(f"9pfs connect failed: Rversion {r.version!r} (ENOMSG)")
        self.msize = r.msize
        return r.msize

    def attach(self) -> m.Qid:
        """fid 0, afid 0 (not NOFID), uname and aname "root", n_uname 0."""
        return self.call(m.Tattach, ROOT_FID, 0, "root", "root", 0).qid

    @property
    def fids_in_use(self) -> frozenset[int]:
        with self._fid_lock:
            return frozenset(self._fids_in_use)

    def new_fid(self) -> int:
        with self._fid_lock:
            for fid in range(1, N_FIDS + 1):
                if fid not in self._fids_in_use:
                    self._fids_in_use.add(fid)
                    return fid
        raise P9Error(errno.ENFILE, "every fid of the bitmap is in use")

    def _put_fid(self, fid: int) -> None:
        with self._fid_lock:
            self._fids_in_use.discard(fid)

    # -- files ----------------------------------------------------------------------

    def walk(self, path: str) -> int:
        """A fid for `path`: a clone of fid 0, then one name per Twalk, as 9pfront walks."""
        fid = self.new_fid()
        try:
            self.call(m.Twalk, ROOT_FID, fid, ())
        except BaseException:
            self._put_fid(fid)
            raise
        try:
            for name in [p for p in path.split("/") if p]:
                self.call(m.Twalk, fid, fid, (name,))
        except BaseException:
            self.clunk(fid)
            raise
        return fid

    def open(self, path: str, mode: int = c.OREAD, *, create: bool = False, perm: int = 0o644) -> MiniOSFile:
        """Topen the walked fid; with `create`, a missing last name is made by Tcreate (extension "")."""
        parts = [p for p in path.split("/") if p]
        fid = self.walk("/".join(parts[:-1]))
        try:
            try:
                self.call(m.Twalk, fid, fid, (parts[-1],))
            except P9Error as e:
                if not create or e.errno != errno.ENOENT:
                    raise
                r = self.call(m.Tcreate, fid, parts[-1], perm, mode, "")
                return MiniOSFile(fid, path, r.iounit)
            r = self.call(m.Topen, fid, mode)
            return MiniOSFile(fid, path, r.iounit)
        except BaseException:
            self.clunk(fid)
            raise

    def read(self, f: MiniOSFile, offset: int, count: int) -> bytes:
        out = bytearray()
        while len(out) < count:
            want = min(count - len(out), self.msize - RREAD_OVERHEAD)
            data = self.call(m.Tread, f.fid, offset + len(out), want).data
            out += data
            if len(data) < want:
                break
        return bytes(out)

    def write(self, f: MiniOSFile, offset: int, data: bytes) -> int:
        done = 0
        while done < len(data):
            chunk = data[done:done + self.msize - TWRITE_OVERHEAD]
            n = self.call(m.Twrite, f.fid, offset + done, chunk).count
            done += n
            if n < len(chunk):
                break
        return done

    def stat(self, fid: int) -> StatRecord:
        return self.call(m.Tstat, fid).stat

    def clunk(self, fid: int) -> None:
        try:
            self.call(m.Tclunk, fid)
        finally:
            self._put_fid(fid)

    def remove(self, fid: int) -> None:
        """Tremove: Mini-OS's 9pfront never sends it (xen-9pfsd serves it); the simulated guest cleans up with it."""
        try:
            self.call(m.Tremove, fid)
        finally:
            self._put_fid(fid)  # gone on the server either way

    def close(self) -> None:
        """End the session (the transport with it) and wait for the reader."""
        self.transport.close()
        self._reader.join(10)
