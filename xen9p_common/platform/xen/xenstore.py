"""XenStore on a real dom0: pyxs on the xenstored socket, our wire client where pyxs cannot go.

open_xenstore() picks the socket like libxenstore does, else /dev/xen/xenbus (stub-domain xenstored).
"""
from __future__ import annotations

import copy
import errno
import os
import queue
import threading
from typing import Callable, Sequence, TypeVar

from ...errors import XenStoreError
from .. import DEFAULT_TIMEOUT, Perm, Transaction, WatchEvent, XenStore
from ..xswire import XsType, XsWireClient, check_path, decode_value, encode_value, errno_from_name

T = TypeVar("T")
XENBUS_DEVICE = "/dev/xen/xenbus"


def socket_candidates(env: dict[str, str] | None = None) -> list[str]:
    """Where libxenstore looks for xenstored's socket, in order."""
    env = os.environ if env is None else env
    out = []
    if env.get("XENSTORED_PATH"):
        out.append(env["XENSTORED_PATH"])
    if env.get("XENSTORED_RUNDIR"):
        out.append(os.path.join(env["XENSTORED_RUNDIR"], "socket"))
    out += ["/run/xenstored/socket", "/var/run/xenstored/socket"]
    return out


def find_socket(env: dict[str, str] | None = None) -> str | None:
    import stat
    for path in socket_candidates(env):
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return path
        except OSError:
            continue
    return None


def open_xenstore(timeout: float = DEFAULT_TIMEOUT, env: dict[str, str] | None = None) -> XenStore:
    """The xenstored socket through pyxs if there is one, else our client on /dev/xen/xenbus."""
    path = find_socket(env)
    if path is not None:
        return PyxsXenStore(path, timeout=timeout)
    if os.path.exists(XENBUS_DEVICE):
        return XsWireClient(XENBUS_DEVICE, device=True, timeout=timeout)
    raise XenStoreError(errno.ENOENT, "no xenstored socket (" + ", ".join(socket_candidates(env))
                        + f") and no {XENBUS_DEVICE}")


def _pyxs():
    # pyxs reads /proc/xen/capabilities at import (harmless if missing): import it only when used.
    import pyxs.client
    import pyxs.exceptions
    return pyxs


class _EventSink:
    """Stands in for a pyxs Monitor: the router calls events.put(); we queue and signal a pipe."""

    def __init__(self) -> None:
        self.events = self
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signalled = False

    def put(self, ev) -> None:
        self._q.put(WatchEvent(decode_value(ev.path), decode_value(ev.token)))
        with self._lock:
            if not self._signalled:
                self._signalled = True
                os.write(self.w, b"!")

    def get(self, timeout: float) -> WatchEvent | None:
        try:
            ev = self._q.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        with self._lock:
            if self._q.empty() and self._signalled:
                try:
                    os.read(self.r, 64)
                except BlockingIOError:
                    pass
                self._signalled = False
        return ev

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def _make_router(pyxs, path: str, timeout: float):
    """A pyxs Router whose reply waits are bounded and which fails waiters when the connection dies."""
    from pyxs.client import Router, RVar
    from pyxs.connection import UnixSocketConnection

    class BoundedRVar(RVar):
        __slots__ = ()

        def get(self):
            with self.condition:
                if self.target is None:
                    self.condition.wait(timeout)
            if self.target is None:
                raise XenStoreError(errno.ETIMEDOUT, f"xenstore reply timed out ({path})")
            if isinstance(self.target, XenStoreError):
                raise XenStoreError(self.target.errno, str(self.target))
            return self.target

    class BoundedRouter(Router):
        dead: XenStoreError | None = None

        def __call__(self):
            try:
                super().__call__()
            except Exception as e:  # pyxs lets the router thread die on I/O errors
                self.dead = XenStoreError(errno.ECONNRESET, f"xenstore connection {path} lost: {e}")
            finally:
                self.dead = self.dead or XenStoreError(errno.ECONNRESET, f"xenstore connection {path} closed")
                for rvar in list(self.rvars.values()):
                    rvar.set(self.dead)
                self.rvars.clear()

        def send(self, packet):
            if self.dead is not None:
                raise XenStoreError(self.dead.errno, str(self.dead))
            with self.send_lock:
                self.rvars[packet.rq_id] = rvar = BoundedRVar()
                try:
                    self.connection.send(packet)
                except pyxs.exceptions.PyXSError as e:
                    self.rvars.pop(packet.rq_id, None)
                    raise XenStoreError(errno.ECONNRESET, str(e)) from e
                return rvar

        def terminate(self):
            if self.is_connected and self.thread.is_alive():
                try:
                    self.w_terminator.sendall(b"\0")
                except OSError:
                    pass
            if self.thread.is_alive():
                self.thread.join(timeout)

    return BoundedRouter(UnixSocketConnection(path))


class PyxsXenStore(XenStore):
    """pyxs on a xenstored Unix socket, with every wait bounded by `timeout`.

    Empty and non-ASCII values, which pyxs' write() refuses, are sent as raw pyxs packets.
    """

    def __init__(self, path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        pyxs = _pyxs()
        self.path = path
        self.timeout = timeout
        self._pyxs = pyxs
        self._router = _make_router(pyxs, path, timeout)
        self._client = pyxs.client.Client(router=self._router)
        try:
            self._client.connect()
        except pyxs.exceptions.PyXSError as e:
            raise XenStoreError(errno.ECONNREFUSED, f"cannot connect to xenstore at {path}: {e}") from e
        self._sink = _EventSink()
        self._tokens: dict[tuple[bytes, bytes], None] = {}

    def _call(self, fn, *args):
        """Run a pyxs call, turning its exceptions into XenStoreError."""
        try:
            return fn(*args)
        except XenStoreError:
            raise
        except self._pyxs.exceptions.PyXSError as e:
            code = e.args[0] if e.args and isinstance(e.args[0], int) else errno.EINVAL
            raise XenStoreError(code, f"xenstore: {e}") from e
        except ValueError as e:  # pyxs refuses non-7-bit payloads with a bare ValueError
            raise XenStoreError(errno.EINVAL, f"xenstore: {e}") from e

    def _raw(self, client, op: int, payload: bytes) -> bytes:
        """Send a packet pyxs' helpers would refuse (empty value, UTF-8) through the same router."""
        from pyxs._internal import Packet, next_rq_id
        packet = Packet(op, payload, rq_id=next_rq_id(), tx_id=client.tx_id)
        reply = self._router.send(packet).get()
        if reply.op == XsType.ERROR:
            name = reply.payload.rstrip(b"\0").decode("ascii", "replace")
            raise XenStoreError(errno_from_name(name), f"xenstore: {name}")
        return reply.payload

    # Operations shared with transactions (which use a pyxs client copy with its own tx_id).

    def _read(self, client, path: str) -> str | None:
        p = check_path(path)
        try:
            return decode_value(self._raw(client, XsType.READ, p + b"\0"))
        except XenStoreError as e:
            if e.errno == errno.ENOENT:
                return None
            raise

    def _write(self, client, path: str, value: str) -> None:
        self._raw(client, XsType.WRITE, check_path(path) + b"\0" + encode_value(value))

    def _list(self, client, path: str) -> list[str]:
        return [decode_value(n) for n in self._call(client.list, check_path(path))]

    def _set_perms(self, client, path: str, perms: Sequence[Perm]) -> None:
        if not perms:
            raise XenStoreError(errno.EINVAL, "a permission list needs at least the owner entry")
        self._call(client.set_perms, check_path(path), [p.wire().encode() for p in perms])

    def read(self, path: str) -> str | None:
        return self._read(self._client, path)

    def write(self, path: str, value: str) -> None:
        self._write(self._client, path, value)

    def mkdir(self, path: str) -> None:
        self._call(self._client.mkdir, check_path(path))

    def rm(self, path: str) -> None:
        self._call(self._client.delete, check_path(path))

    def list(self, path: str) -> list[str]:
        return self._list(self._client, path)

    def get_perms(self, path: str) -> list[Perm]:
        return [Perm.parse(p.decode()) for p in self._call(self._client.get_perms, check_path(path))]

    def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        self._set_perms(self._client, path, perms)

    def transaction(self, fn: Callable[[Transaction], T], retries: int = 16) -> T:
        for _ in range(retries + 1):
            # A copy shares the router but has its own tx_id, so threads do not share one transaction.
            client = copy.copy(self._client)
            self._call(client.transaction)
            try:
                result = fn(_PyxsTransaction(self, client))
            except XenStoreError as e:
                self._abort(client)
                if e.errno == errno.EAGAIN:
                    continue
                raise
            except BaseException:
                self._abort(client)
                raise
            if self._call(client.commit):
                return result
        raise XenStoreError(errno.EAGAIN, f"xenstore transaction still conflicting after {retries} retries")

    def _abort(self, client) -> None:
        try:
            self._call(client.rollback)
        except XenStoreError:
            pass

    def watch(self, path: str, token: str) -> None:
        key = (check_path(path, watch=True), encode_value(token))
        if key[1] not in {t for _, t in self._tokens}:
            self._router.subscribe(key[1], self._sink)
        self._call(self._client.ack, XsType.WATCH, key[0] + b"\0", key[1] + b"\0")
        self._tokens[key] = None

    def unwatch(self, path: str, token: str) -> None:
        key = (check_path(path, watch=True), encode_value(token))
        self._call(self._client.ack, XsType.UNWATCH, key[0] + b"\0", key[1] + b"\0")
        self._tokens.pop(key, None)
        if key[1] not in {t for _, t in self._tokens}:
            try:
                self._router.unsubscribe(key[1], self._sink)
            except ValueError:
                pass

    def wait_event(self, timeout: float) -> WatchEvent | None:
        ev = self._sink.get(timeout)
        if ev is None and self._router.dead is not None:
            raise XenStoreError(self._router.dead.errno, str(self._router.dead))
        return ev

    def event_fd(self) -> int:
        return self._sink.r

    def get_domain_path(self, domid: int) -> str:
        return decode_value(self._call(self._client.get_domain_path, domid))

    def close(self) -> None:
        self._router.terminate()
        self._sink.close()


class _PyxsTransaction(Transaction):
    def __init__(self, store: PyxsXenStore, client) -> None:
        self.store = store
        self.client = client

    def read(self, path: str) -> str | None:
        return self.store._read(self.client, path)

    def write(self, path: str, value: str) -> None:
        self.store._write(self.client, path, value)

    def mkdir(self, path: str) -> None:
        self.store._call(self.client.mkdir, check_path(path))

    def rm(self, path: str) -> None:
        self.store._call(self.client.delete, check_path(path))

    def list(self, path: str) -> list[str]:
        return self.store._list(self.client, path)

    def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        self.store._set_perms(self.client, path, perms)
