"""XsWireClient: our own small xenstore client over a Unix socket or /dev/xen/xenbus, every wait bounded.

Used where pyxs falls short: /dev/xen/xenbus, watches with timeouts, empty values, and the simulator tooling.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from collections import deque
from typing import Callable, Sequence, TypeVar

from ..errors import XenStoreError
from . import Perm, Transaction, WatchEvent, XenStore
# The wire format lives in xsproto; re-exported because callers import it from here.
from .xsproto import (ABS_PATH_MAX, ERROR_NAMES, HEADER, PAYLOAD_MAX, REL_PATH_MAX, FrameReader,
                      WireError, XsMessage, XsType, check_path, decode_value, encode_value, errno_from_name,
                      errno_name, pack_message, path_error, split_strings)

from .xswire_tx import WireTransaction, xs_get_perms, xs_list, xs_mkdir, xs_read, xs_rm, xs_set_perms, xs_write

__all__ = ["ABS_PATH_MAX", "ERROR_NAMES", "HEADER", "PAYLOAD_MAX", "REL_PATH_MAX", "FrameReader", "WireError",
           "XsMessage", "XsType", "XsWireClient", "check_path", "decode_value", "encode_value",
           "errno_from_name", "errno_name", "pack_message", "path_error", "split_strings"]

T = TypeVar("T")


class _Pending:
    __slots__ = ("mtype", "event", "reply")

    def __init__(self, mtype: int) -> None:
        self.mtype = mtype
        self.event = threading.Event()
        self.reply: XsMessage | XenStoreError | None = None


class XsWireClient(XenStore):
    """A xenstore connection over a Unix socket or a xenbus device, every wait bounded.

    A reader thread matches replies to requests by req_id and queues WATCH_EVENTs;
    event_fd() is readable while events are queued or once the connection is dead.
    """

    def __init__(self, path: str, *, device: bool = False, timeout: float = 10.0) -> None:
        self.path = path
        self.device = device
        self.timeout = timeout
        self._sock: socket.socket | None = None
        try:
            if device:
                self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            else:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(timeout)
                self._sock.connect(path)
                self._sock.settimeout(None)
                self._fd = self._sock.fileno()
        except OSError as e:
            if self._sock is not None:
                self._sock.close()
            raise XenStoreError(e.errno or errno.EIO, f"cannot connect to xenstore at {path}: {e}") from e
        self._lock = threading.Lock()        # guards _pending, _events, _dead, req ids
        self._send_lock = threading.Lock()   # one whole message per write
        self._pending: dict[int, _Pending] = {}
        self._next_req = 1
        self._events: deque[WatchEvent] = deque()
        self._events_cv = threading.Condition(self._lock)
        self._dead: XenStoreError | None = None
        self._closed = False
        self._evt_r, self._evt_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signalled = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._reader = threading.Thread(target=self._read_loop, name=f"xswire-reader:{path}", daemon=True)
        self._reader.start()

    # -- plumbing ---------------------------------------------------------

    def _read_loop(self) -> None:
        frames = FrameReader()
        reason = XenStoreError(errno.ECONNRESET, f"xenstore connection {self.path} closed")
        try:
            while True:
                r, _, _ = select.select([self._fd, self._wake_r], [], [])
                if self._wake_r in r:
                    reason = XenStoreError(errno.EBADF, "xenstore client closed")
                    break
                try:
                    data = os.read(self._fd, 65536)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    break
                for msg in frames.feed(data):
                    self._dispatch(msg)
        except (OSError, ValueError) as e:
            reason = XenStoreError(getattr(e, "errno", None) or errno.EIO, f"xenstore connection {self.path}: {e}")
        except WireError as e:
            reason = e
        self._die(reason)

    def _dispatch(self, msg: XsMessage) -> None:
        with self._lock:
            if msg.type == XsType.WATCH_EVENT:
                parts = split_strings(msg.payload)
                if len(parts) >= 2:
                    self._events.append(WatchEvent(parts[0], parts[1]))
                    self._signal_locked()
                    self._events_cv.notify_all()
                return
            waiter = self._pending.pop(msg.req_id, None)
            if waiter is None:
                # Old Linux xenbus devices answered WATCH with a wrong req_id: give the
                # reply to the only request of that type still waiting, if unambiguous.
                same = [k for k, p in self._pending.items() if p.mtype == msg.type]
                if len(same) == 1:
                    waiter = self._pending.pop(same[0])
            if waiter is None:
                return  # a reply to a request that already timed out
        waiter.reply = msg
        waiter.event.set()

    def _signal_locked(self) -> None:
        if not self._signalled:
            self._signalled = True
            try:
                os.write(self._evt_w, b"!")
            except OSError:
                pass

    def _die(self, reason: XenStoreError) -> None:
        with self._lock:
            if self._dead is None:
                self._dead = reason
            waiters = list(self._pending.values())
            self._pending.clear()
            self._signal_locked()
            self._events_cv.notify_all()
        for w in waiters:
            w.reply = reason
            w.event.set()

    def request(self, mtype: int, payload: bytes, tx_id: int = 0, timeout: float | None = None) -> bytes:
        """Send one request and wait (bounded) for its reply payload; ERROR -> XenStoreError."""
        waiter = _Pending(mtype)
        with self._lock:
            if self._dead is not None:
                raise XenStoreError(self._dead.errno, str(self._dead))
            req_id = self._next_req
            self._next_req = (self._next_req + 1) & 0xFFFFFFFF or 1
            self._pending[req_id] = waiter
        data = pack_message(mtype, req_id, tx_id, payload)
        try:
            with self._send_lock:
                view = memoryview(data)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
        except OSError as e:
            with self._lock:
                self._pending.pop(req_id, None)
            raise XenStoreError(e.errno or errno.EIO, f"xenstore write to {self.path} failed: {e}") from e
        if not waiter.event.wait(self.timeout if timeout is None else timeout):
            with self._lock:
                self._pending.pop(req_id, None)
            raise XenStoreError(errno.ETIMEDOUT, f"xenstore {XsType(mtype).name} timed out ({self.path})")
        reply = waiter.reply
        if isinstance(reply, XenStoreError):
            raise XenStoreError(reply.errno, str(reply))
        assert reply is not None
        if reply.type == XsType.ERROR:
            name = reply.payload.rstrip(b"\0").decode("ascii", "replace")
            raise XenStoreError(errno_from_name(name), f"xenstore {XsType(mtype).name}: {name}")
        return reply.payload

    # -- XenStore ---------------------------------------------------------

    def read(self, path: str) -> str | None:
        return xs_read(self, path, 0)

    def write(self, path: str, value: str) -> None:
        xs_write(self, path, value, 0)

    def mkdir(self, path: str) -> None:
        xs_mkdir(self, path, 0)

    def rm(self, path: str) -> None:
        xs_rm(self, path, 0)

    def list(self, path: str) -> list[str]:
        return xs_list(self, path, 0)

    def get_perms(self, path: str) -> list[Perm]:
        return xs_get_perms(self, path, 0)

    def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        xs_set_perms(self, path, perms, 0)

    def exists(self, path: str) -> bool:
        try:
            self.request(XsType.READ, check_path(path) + b"\0")
            return True
        except XenStoreError as e:
            if e.errno == errno.ENOENT:
                return False
            raise

    def transaction(self, fn: Callable[[Transaction], T], retries: int = 16) -> T:
        for _ in range(retries + 1):
            tx_id = self.start_transaction()
            tx = WireTransaction(self, tx_id)
            try:
                result = fn(tx)
            except XenStoreError as e:
                self._end(tx_id, commit=False)
                if e.errno == errno.EAGAIN:
                    continue
                raise
            except BaseException:
                self._end(tx_id, commit=False)
                raise
            try:
                self.end_transaction(tx_id, commit=True)
                return result
            except XenStoreError as e:
                if e.errno != errno.EAGAIN:
                    raise
        raise XenStoreError(errno.EAGAIN, f"xenstore transaction still conflicting after {retries} retries")

    def _end(self, tx_id: int, commit: bool) -> None:
        try:
            self.end_transaction(tx_id, commit)
        except XenStoreError:
            pass  # aborting a transaction that is already gone is not an error worth reporting

    def start_transaction(self) -> int:
        """Low-level: begin a transaction and return its id (for tests and tools)."""
        return int(self.request(XsType.TRANSACTION_START, b"\0").rstrip(b"\0"))

    def end_transaction(self, tx_id: int, commit: bool = True) -> None:
        """Low-level: end a transaction; raises XenStoreError(EAGAIN) on a conflicting commit."""
        self.request(XsType.TRANSACTION_END, b"T\0" if commit else b"F\0", tx_id=tx_id)

    def bind_transaction(self, tx_id: int) -> "Transaction":
        return WireTransaction(self, tx_id)

    def watch(self, path: str, token: str) -> None:
        self.request(XsType.WATCH, check_path(path, watch=True) + b"\0" + encode_value(token) + b"\0")

    def unwatch(self, path: str, token: str) -> None:
        self.request(XsType.UNWATCH, check_path(path, watch=True) + b"\0" + encode_value(token) + b"\0")

    def reset_watches(self) -> None:
        self.request(XsType.RESET_WATCHES, b"")
        with self._lock:
            self._events.clear()
            self._drain_locked()

    def wait_event(self, timeout: float) -> WatchEvent | None:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._events_cv:
            while not self._events:
                if self._dead is not None:
                    raise XenStoreError(self._dead.errno, str(self._dead))
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._events_cv.wait(left)
            ev = self._events.popleft()
            if not self._events and self._dead is None:
                self._drain_locked()
            return ev

    def _drain_locked(self) -> None:
        if self._signalled:
            try:
                while os.read(self._evt_r, 64):
                    pass
            except BlockingIOError:
                pass
            self._signalled = False

    def event_fd(self) -> int:
        return self._evt_r

    def get_domain_path(self, domid: int) -> str:
        return decode_value(self.request(XsType.GET_DOMAIN_PATH, b"%d\0" % domid).rstrip(b"\0"))

    def is_domain_introduced(self, domid: int) -> bool:
        return self.request(XsType.IS_DOMAIN_INTRODUCED, b"%d\0" % domid).rstrip(b"\0") == b"T"

    def introduce_domain(self, domid: int, mfn: int = 0, port: int = 0) -> None:
        """XS_INTRODUCE (dom0 only); in the simulator the guest then connects to `<socket>.d<domid>`."""
        self.request(XsType.INTRODUCE, b"%d\0%d\0%d\0" % (domid, mfn, port))

    def release_domain(self, domid: int) -> None:
        """XS_RELEASE (dom0 only): xenstored forgets the domain and fires @releaseDomain."""
        self.request(XsType.RELEASE, b"%d\0" % domid)

    @property
    def alive(self) -> bool:
        return self._dead is None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._reader.join(self.timeout)
        if self._sock is not None:
            self._sock.close()
        else:
            os.close(self._fd)
        for fd in (self._evt_r, self._evt_w, self._wake_r, self._wake_w):
            os.close(fd)

    def __enter__(self) -> "XsWireClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
