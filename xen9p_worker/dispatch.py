"""Transport-independent 9P dispatch: one Session per 9P session, frames in, frames out.

Cheap requests run on the caller's thread; blocking ones on a worker pool. Every
request gets exactly one reply, except one flushed before it started.

The dialect (9P2000.L or 9P2000.u) is what the session state's version says: it picks
the handler table and the error reply (Rlerror, or Rerror for .u: a .u client never
sees an Rlerror). Every Tversion moves the state's epoch, so each Session (each ring
worker's, whichever ring took the Tversion) re-reads the dialect before its next request.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from typing import Callable

from xen9p_common.errors import DecodeError, Xen9pError
from xen9p_common.p9 import messages as M

from xen9p_common.p9 import constants as C

from . import handlers, handlers_u
from .fdcache import FdBudget, FdCache
from .fids import FidTable, LocalFidTable
from .locks import LocalLockTable, LockTable
from .pool import WorkerPool

log = logging.getLogger("xen9p.dispatch")

Reply = Callable[[object], None]  # bytes (a whole frame) or int (length written via alloc)
Alloc = Callable[[int], list]     # size -> list[memoryview] the reply frame is written into
Note = Callable[[int], None]      # value -> kept where a crash-resuming successor finds it (ring journal)

_QUEUED, _RUNNING, _DONE, _DROPPED = range(4)
PENDING = handlers.PENDING

# Inline ops whose handler always answers before it returns (never PENDING, never parks).
# Run on the transport's thread, they finish before that thread can take a Tflush or a
# cancel, so they skip the in-flight table and its lock (the hot path of small ops).
SYNC_INLINE = frozenset({M.Tgetattr, M.Twalk, M.Tclunk, M.Tstatfs, M.Treadlink, M.Txattrwalk,
                         M.Tgetlock, M.Tattach, M.Tauth, M.Txattrcreate, M.Tstat}) | handlers.NAMESPACE
ENAME_MAX = 64  # Rerror text bytes at most (xen-9pfsd caps at 80; Unikraft reads small replies into 1 KiB)


class Limits:
    """Per-device resource bounds; None means unbounded."""

    def __init__(self, max_fids: int | None = None, max_open_files: int | None = None,
                 max_space: int | None = None) -> None:
        self.max_fids = max_fids
        self.max_open_files = max_open_files
        self.max_space = max_space  # bytes a Twrite/Tsetattr may grow the export to (statvfs-based)


class Server:
    """What every session of one export shares: backend, lock table, worker pool, limits."""

    def __init__(self, backend, *, msize_cap: int = M.MSIZE_CAP, pool_size: int = 8,
                 limits: Limits | None = None, locks: LockTable | None = None,
                 fid_table_factory: Callable[[int], FidTable] | None = None,
                 inline_ops: frozenset | None = None, fd_cache_size: int = 1024) -> None:
        self.backend = backend
        self.msize_cap = max(msize_cap, M.HEADER_SIZE + 4096)
        self.limits = limits or Limits()
        self.locks = locks or LocalLockTable()
        self.pool = WorkerPool(pool_size, "xen9p-io")
        self.fid_table_factory = fid_table_factory or (lambda n: LocalFidTable(n))
        self.inline = handlers.INLINE if inline_ops is None else inline_ops
        self.fd_cache_size = fd_cache_size
        self.fd_budget = FdBudget()  # every session's fds against this process's RLIMIT_NOFILE
        self.quota = None  # made on first use by quota.quota_for(): one per process

    def session(self, fids: FidTable | None = None, locks: LockTable | None = None,
                state=None) -> "Session":
        """A new session; a ring worker passes the device's shared fids, locks and state."""
        if fids is None:
            fids = self.fid_table_factory(self.limits.max_fids or (1 << 20))
        return Session(self, fids, locks or self.locks, state or LocalSessionState())

    def close(self) -> None:
        self.pool.close()


class LocalSessionState:
    """What Tversion negotiates; a shared-memory object with the same attributes may replace it."""

    def __init__(self) -> None:
        self.msize = 0  # 0: no Tversion yet
        self.version = ""
        self.epoch = 0  # moved by every Tversion that starts a new session

    def bump_epoch(self) -> None:
        self.epoch += 1


def error_frame(tag: int, err: int, dialect_u: bool) -> bytes:
    """The error reply of a dialect: Rerror (short strerror text + errno) for .u, else Rlerror."""
    err = err or errno.EIO
    if dialect_u:
        text = os.strerror(err).encode()[:ENAME_MAX].decode("ascii", "replace")
        return M.encode(M.Rerror(tag, text, err))
    return M.encode(M.Rlerror(tag, err))


class Request:
    __slots__ = ("tag", "msg", "reply", "alloc", "note", "state", "flushes", "cancel")

    def __init__(self, tag, msg, reply, alloc, note=None) -> None:
        self.tag, self.msg, self.reply, self.alloc, self.note = tag, msg, reply, alloc, note
        self.state = _QUEUED
        self.flushes: list[tuple[int, Reply]] = []
        self.cancel: Callable[[], bool] | None = None


class Session:
    """One 9P session: its fids, negotiated msize and in-flight tags."""

    def __init__(self, server: Server, fids: FidTable, locks: LockTable, state) -> None:
        self.server = server
        self.backend = server.backend
        self.locks = locks
        self.fids = fids
        self.state = state
        self.fds = FdCache(server.fd_cache_size, budget=server.fd_budget, on_reclaim=fids.mark_reclaimed)
        self.lock_keys: dict[int, tuple] = {}  # fid -> lock-table key of files it locked through
        self._mu = threading.Lock()
        self._inflight: dict[int, Request] = {}
        # Requests whose reply is being handed to the transport. Out of _inflight first, so a
        # client that reuses the tag the moment it has the reply (Linux does) is not refused;
        # still findable, so a Tflush that raced the reply gets its Rflush after that reply.
        self._replying: dict[int, Request] = {}
        # close() clunks every fid, but a request already running on an I/O thread may still make a
        # fid or cache an fd after that: the last such request to end clunks again (else they leak).
        self._running = 0
        self._closed = False
        self.dialect_u = False
        self._epoch = -1
        self._table = handlers.TABLE
        self.on_new_session: Callable[[], None] | None = None  # a ring worker's device-wide reset
        self.inline_ops = server.inline
        self._sync_inline = server.inline & SYNC_INLINE
        self.pool_submit = server.pool.submit
        self.pid = os.getpid()

    # -- the transport-facing API --------------------------------------------

    def submit(self, frame, reply: Reply, alloc: Alloc | None = None, note: Note | None = None) -> None:
        """Handle one whole request frame; `reply` gets its reply frame exactly once.

        With `alloc`, a Tread writes its reply in place into the segments alloc(size)
        returns and then calls reply(length); any other reply arrives as bytes (the
        transport places it in an allocation it already handed out). `frame` must stay
        valid until the reply (Twrite data is a view into it). With `note`, a handler about
        to apply a non-idempotent host call first records what a successor re-running the
        request after a crash needs (an O_APPEND Twrite: the file's size before it).
        """
        if self.state.epoch != self._epoch:
            self.sync_dialect()
        try:
            msg = M.decode(frame)
        except DecodeError as e:
            tag = M.NOTAG
            if len(frame) >= M.HEADER_SIZE:
                tag = M.HEADER.unpack_from(frame, 0)[2]
            reply(self.error_frame(tag, e.errno))
            return
        tag = msg.tag
        cls = type(msg)
        if cls is M.Tflush:
            self._flush(msg, reply)
            return
        fn = self._table.get(cls)
        if fn is None:  # an R message, or a message of the other dialect
            reply(self.error_frame(tag, errno.EOPNOTSUPP))
            return
        req = Request(tag, msg, reply, alloc, note)
        if cls in self._sync_inline:
            req.state = _RUNNING
            result = self._call(req, fn)
            if isinstance(result, M.Message):
                result = M.encode(result)
            req.state = _DONE
            try:
                reply(result)
            except Exception:
                log.exception("transport failed to take the reply of tag %d", tag)
            return
        with self._mu:
            if tag in self._inflight:
                log.warning("tag %d reused while in flight; it cannot be flushed", tag)
            else:
                self._inflight[tag] = req
        if cls in self.inline_ops:
            self._run(req, fn)
        else:
            self.pool_submit(self._run, req, fn)

    def sync_dialect(self) -> None:
        """Take the dialect (handler table, error reply) from the session state."""
        self._epoch = self.state.epoch
        self.dialect_u = self.state.version == C.VERSION_9P2000U
        self._table = handlers_u.TABLE_U if self.dialect_u else handlers.TABLE

    def error_frame(self, tag: int, err: int) -> bytes:
        """This session's error reply (Rerror in a .u session, else Rlerror)."""
        return error_frame(tag, err, self.dialect_u)

    def new_session(self, msize: int, version: str) -> None:
        """Tversion that starts over: every fid clunked, then the new msize and dialect."""
        self.reset()
        self.state.msize, self.state.version = msize, version
        self.state.bump_epoch()
        self.sync_dialect()
        if self.on_new_session is not None:
            self.on_new_session()

    def close(self) -> None:
        """The transport is gone: withdraw waiters and clunk every fid."""
        with self._mu:
            reqs = list(self._inflight.values())
            self._inflight.clear()
            self._closed = True
        for r in reqs:
            if r.cancel is not None:
                r.cancel()
            r.state = _DROPPED
        handlers.clunk_all(self)

    def request_state(self, tag: int) -> str | None:
        """Where the request with `tag` is (diagnostics): queued, running, replying, or None."""
        with self._mu:
            req = self._inflight.get(tag)
            if req is None:
                return "replying" if tag in self._replying else None
            cancel = " (parked, cancellable)" if req.cancel is not None else ""
            return ("queued for an I/O thread", "running", "done", "dropped")[req.state] + cancel

    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def msize(self) -> int:
        return self.state.msize or 8192  # before Tversion: enough for Tversion/Rlerror

    def cancel(self, tag: int) -> bool:
        """Withdraw a request of this process that waits (a blocked Tlock) or has not started.

        True if it will never be answered. For transports that answer Tflush themselves.
        """
        with self._mu:
            req = self._inflight.get(tag)
            if req is None:
                return False
            if req.state == _QUEUED or (req.state == _RUNNING and req.cancel is not None and req.cancel()):
                req.state = _DROPPED
                del self._inflight[tag]
                return True
            return False

    def drop_stale_fds(self) -> int:
        """Close this process's fds of fids that are gone (clunked or reset on another ring)."""
        n = 0
        for key in self.fds.keys():
            fid, gen = key[0], key[1]
            try:
                alive = self.fids.get(fid).generation == gen
            except OSError:
                alive = False
            if not alive:
                self.fds.drop(key)
                n += 1
        return n

    # -- internals ------------------------------------------------------------

    def _run(self, req: Request, fn) -> None:
        with self._mu:
            if req.state == _DROPPED:
                return
            req.state = _RUNNING
            self._running += 1
        try:
            result = self._call(req, fn)
            if result is not PENDING:
                self.finish(req, result)
        finally:
            with self._mu:
                self._running -= 1
                last_after_close = self._closed and not self._running
            if last_after_close:
                handlers.clunk_all(self)  # what requests that outlived close() made

    def _call(self, req: Request, fn):
        """The handler's result, or the error reply (this dialect's) its exception maps to."""
        try:
            return fn(self, req.msg, req)
        except OSError as e:
            return self.error_frame(req.tag, e.errno or errno.EIO)
        except Xen9pError as e:
            return self.error_frame(req.tag, getattr(e, "errno", errno.EIO) or errno.EIO)
        except Exception:
            log.exception("unexpected error serving %r", req.msg)
            return self.error_frame(req.tag, errno.EIO)

    def finish(self, req: Request, result) -> None:
        """Send the reply of req, then the Rflush of every Tflush that waited for it."""
        if isinstance(result, M.Message):
            result = M.encode(result)
        with self._mu:
            req.state = _DONE
            if self._inflight.get(req.tag) is req:
                del self._inflight[req.tag]
            self._replying[req.tag] = req
        try:
            req.reply(result)
        except Exception:
            log.exception("transport failed to take the reply of tag %d", req.tag)
        with self._mu:
            if self._replying.get(req.tag) is req:
                del self._replying[req.tag]
            flushes, req.flushes = req.flushes, []
        for ftag, freply in flushes:
            freply(M.encode(M.Rflush(ftag)))

    def park(self, req: Request, cancel: Callable[[], bool]) -> object:
        """Mark req as waiting (a blocked Tlock) that a Tflush may cancel; returns PENDING."""
        with self._mu:
            req.cancel = cancel
            flushes = req.flushes if req.flushes and cancel() else None
            if flushes is not None:
                req.state = _DROPPED
                req.flushes = []
                self._inflight.pop(req.tag, None)
        for ftag, freply in flushes or ():
            freply(M.encode(M.Rflush(ftag)))
        return PENDING

    def _flush(self, msg: M.Tflush, reply: Reply) -> None:
        with self._mu:
            old = self._inflight.get(msg.oldtag)
            if old is None:
                replying = self._replying.get(msg.oldtag)
                if replying is not None:  # its reply is on its way: Rflush goes after it
                    replying.flushes.append((msg.tag, reply))
                    return
            if old is not None:
                if old.state == _QUEUED or (old.cancel is not None and old.cancel()):
                    old.state = _DROPPED  # never replied to
                    del self._inflight[msg.oldtag]
                else:
                    old.flushes.append((msg.tag, reply))
                    return
        reply(M.encode(M.Rflush(msg.tag)))

    def reset(self) -> None:
        """Tversion: withdraw parked requests (never answered) and forget every fid.

        Requests already running finish against what they hold.
        """
        with self._mu:
            for tag, req in list(self._inflight.items()):
                if req.cancel is not None and req.cancel():
                    req.state = _DROPPED
                    del self._inflight[tag]
        handlers.clunk_all(self)
