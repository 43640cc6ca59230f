"""The xenstore wire protocol (xs_wire.h) and XsWireClient, our own small client for it.

Used where pyxs falls short: /dev/xen/xenbus, watches with timeouts, empty values, and the simulator tooling.
"""
from __future__ import annotations

import enum
import errno
import os
import re
import select
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from ..errors import XenStoreError
from . import Perm, Transaction, WatchEvent, XenStore

T = TypeVar("T")

HEADER = struct.Struct("<IIII")  # type, req_id, tx_id, len
PAYLOAD_MAX = 4096
ABS_PATH_MAX = 3072
REL_PATH_MAX = 2048


class XsType(enum.IntEnum):
    DEBUG = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


# The errno names xenstored may answer with (xsd_errors in xs_wire.h).
ERROR_NAMES = ("EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
               "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM")


def errno_name(err: int) -> str:
    """The wire name for an errno; errnos outside the xenstore list become EIO."""
    name = errno.errorcode.get(err, "EIO")
    return name if name in ERROR_NAMES else "EIO"


def errno_from_name(name: str) -> int:
    """The errno for a wire name; like libxenstore, an unknown name means EINVAL."""
    if name in ERROR_NAMES:
        return getattr(errno, name)
    return errno.EINVAL


@dataclass(frozen=True)
class XsMessage:
    type: int
    req_id: int
    tx_id: int
    payload: bytes

    def pack(self) -> bytes:
        return pack_message(self.type, self.req_id, self.tx_id, self.payload)

    def __repr__(self) -> str:
        p = self.payload if len(self.payload) <= 64 else self.payload[:64] + b"..."
        try:
            t = XsType(self.type).name
        except ValueError:
            t = str(self.type)
        return f"XsMessage({t}, req_id={self.req_id}, tx_id={self.tx_id}, {p!r})"


class WireError(XenStoreError):
    """A peer broke the framing (oversized payload): the connection cannot be resynchronised."""

    def __init__(self, msg: str) -> None:
        super().__init__(errno.EPROTO, msg)


def pack_message(mtype: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    if len(payload) > PAYLOAD_MAX:
        raise XenStoreError(errno.E2BIG, f"xenstore payload of {len(payload)} bytes > {PAYLOAD_MAX}")
    return HEADER.pack(mtype, req_id & 0xFFFFFFFF, tx_id & 0xFFFFFFFF, len(payload)) + payload


class FrameReader:
    """Cuts a byte stream into whole messages (sans-IO: feed bytes, take messages)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[XsMessage]:
        self._buf += data
        out = []
        while len(self._buf) >= HEADER.size:
            mtype, req_id, tx_id, length = HEADER.unpack_from(self._buf)
            if length > PAYLOAD_MAX:
                raise WireError(f"xenstore message announces {length} payload bytes")
            if len(self._buf) < HEADER.size + length:
                break
            payload = bytes(self._buf[HEADER.size:HEADER.size + length])
            del self._buf[:HEADER.size + length]
            out.append(XsMessage(mtype, req_id, tx_id, payload))
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


_PATH_RE = re.compile(r"^[A-Za-z0-9\-/_@]+$")


def path_error(path: str, *, watch: bool = False) -> str | None:
    """Why `path` is not a valid xenstore node path (or watch path), or None if it is."""
    if watch and path.startswith("@"):
        return None if _PATH_RE.match(path) and len(path) <= REL_PATH_MAX else "bad special watch path"
    if not path or not _PATH_RE.match(path):
        return "path must be [A-Za-z0-9-/_@]+"
    if "//" in path or (len(path) > 1 and path.endswith("/")):
        return "path has '//' or a trailing '/'"
    if len(path) > (ABS_PATH_MAX if path.startswith("/") else REL_PATH_MAX):
        return "path too long"
    return None


def check_path(path: str, *, watch: bool = False) -> bytes:
    """Validate and encode a path; raises XenStoreError(EINVAL)."""
    why = path_error(path, watch=watch)
    if why:
        raise XenStoreError(errno.EINVAL, f"invalid xenstore path {path!r}: {why}")
    return path.encode("ascii")


def encode_value(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def decode_value(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def split_strings(payload: bytes) -> list[str]:
    """NUL-terminated strings of a reply ('a\\0b\\0' -> ['a', 'b']); empty payload -> []."""
    if not payload:
        return []
    parts = payload.split(b"\0")
    if parts[-1] == b"":
        parts.pop()
    return [decode_value(p) for p in parts]


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
        return _read(self, path, 0)

    def write(self, path: str, value: str) -> None:
        _write(self, path, value, 0)

    def mkdir(self, path: str) -> None:
        self.request(XsType.MKDIR, check_path(path) + b"\0")

    def rm(self, path: str) -> None:
        self.request(XsType.RM, check_path(path) + b"\0")

    def list(self, path: str) -> list[str]:
        return _list(self, path, 0)

    def get_perms(self, path: str) -> list[Perm]:
        return _get_perms(self, path, 0)

    def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        _set_perms(self, path, perms, 0)

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
            tx_id = int(self.request(XsType.TRANSACTION_START, b"\0").rstrip(b"\0"))
            tx = _WireTransaction(self, tx_id)
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
                self.request(XsType.TRANSACTION_END, b"T\0", tx_id=tx_id)
                return result
            except XenStoreError as e:
                if e.errno != errno.EAGAIN:
                    raise
        raise XenStoreError(errno.EAGAIN, f"xenstore transaction still conflicting after {retries} retries")

    def _end(self, tx_id: int, commit: bool) -> None:
        try:
            self.request(XsType.TRANSACTION_END, b"T\0" if commit else b"F\0", tx_id=tx_id)
        except XenStoreError:
            pass  # aborting a transaction that is already gone is not an error worth reporting

    def start_transaction(self) -> int:
        """Low-level: begin a transaction and return its id (for tests and tools)."""
        return int(self.request(XsType.TRANSACTION_START, b"\0").rstrip(b"\0"))

    def end_transaction(self, tx_id: int, commit: bool = True) -> None:
        """Low-level: end a transaction; raises XenStoreError(EAGAIN) on a conflicting commit."""
        self.request(XsType.TRANSACTION_END, b"T\0" if commit else b"F\0", tx_id=tx_id)

    def bind_transaction(self, tx_id: int) -> "Transaction":
        return _WireTransaction(self, tx_id)

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


# Shared by the client and its transactions, which differ only in tx_id.

def _read(c: XsWireClient, path: str, tx_id: int) -> str | None:
    try:
        return decode_value(c.request(XsType.READ, check_path(path) + b"\0", tx_id))
    except XenStoreError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def _write(c: XsWireClient, path: str, value: str, tx_id: int) -> None:
    c.request(XsType.WRITE, check_path(path) + b"\0" + encode_value(value), tx_id)


def _list(c: XsWireClient, path: str, tx_id: int) -> list[str]:
    p = check_path(path) + b"\0"
    try:
        return split_strings(c.request(XsType.DIRECTORY, p, tx_id))
    except XenStoreError as e:
        if e.errno != errno.E2BIG:
            raise
    # Too many children for one reply: page through DIRECTORY_PART, restarting if the node changes.
    for _ in range(16):
        names: list[bytes] = []
        offset, gen = 0, None
        while True:
            reply = c.request(XsType.DIRECTORY_PART, p + b"%d\0" % offset, tx_id)
            g, _, rest = reply.partition(b"\0")
            if gen is not None and g != gen:
                break
            gen = g
            done = rest.endswith(b"\0\0") or rest in (b"", b"\0")
            chunk = rest[:-1] if done and rest else rest
            parts = [x for x in chunk.split(b"\0") if x]
            names.extend(parts)
            offset += sum(len(x) + 1 for x in parts)
            if done:
                return [decode_value(n) for n in names]
    raise XenStoreError(errno.EAGAIN, f"children of {path} kept changing")


def _get_perms(c: XsWireClient, path: str, tx_id: int) -> list[Perm]:
    return [Perm.parse(s) for s in split_strings(c.request(XsType.GET_PERMS, check_path(path) + b"\0", tx_id))]


def _set_perms(c: XsWireClient, path: str, perms: Sequence[Perm], tx_id: int) -> None:
    if not perms:
        raise XenStoreError(errno.EINVAL, "a permission list needs at least the owner entry")
    payload = check_path(path) + b"\0" + b"".join(p.wire().encode() + b"\0" for p in perms)
    c.request(XsType.SET_PERMS, payload, tx_id)


class _WireTransaction(Transaction):
    def __init__(self, client: XsWireClient, tx_id: int) -> None:
        self.client = client
        self.tx_id = tx_id

    def read(self, path: str) -> str | None:
        return _read(self.client, path, self.tx_id)

    def write(self, path: str, value: str) -> None:
        _write(self.client, path, value, self.tx_id)

    def mkdir(self, path: str) -> None:
        self.client.request(XsType.MKDIR, check_path(path) + b"\0", self.tx_id)

    def rm(self, path: str) -> None:
        self.client.request(XsType.RM, check_path(path) + b"\0", self.tx_id)

    def list(self, path: str) -> list[str]:
        return _list(self.client, path, self.tx_id)

    def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        _set_perms(self.client, path, perms, self.tx_id)
