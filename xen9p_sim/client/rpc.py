"""9P request/reply core: tag allocation, many requests in flight, a reader thread
that matches replies to requests by tag, timeouts, and Tflush.
"""
from __future__ import annotations

import errno
import logging
import threading
from concurrent.futures import Future

from xen9p_common.errors import DecodeError
from xen9p_common.p9 import messages as m
from xen9p_sim.client.errors import ConnectionClosed, Flushed, P9Error, RpcTimeout, UnexpectedReply
from xen9p_sim.client.transport import Transport

log = logging.getLogger(__name__)

MAX_TAG = 0xFFFE  # NOTAG (0xFFFF) is reserved for Tversion


class RpcClient:
    """Sends T-messages and returns the matching R-messages.

    `rpc(Tclass, *fields)` builds the request with a fresh tag, sends it and waits
    (at most `timeout` seconds) for the reply; Rlerror raises P9Error. The reader
    thread is the only consumer of the transport, so any number of threads may
    have requests outstanding on one connection.
    """

    def __init__(self, transport: Transport, timeout: float = 30.0, name: str = "9p") -> None:
        self.transport = transport
        self.timeout = timeout
        self.msize = 8192  # until Tversion says otherwise
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._flushing: set[int] = set()  # tags whose Rflush has not arrived: never reuse them
        self._next_tag = 0
        self._closed: BaseException | None = None
        self._reader = threading.Thread(target=self._read_loop, name=f"{name}-reader", daemon=True)
        self._reader.start()

    # --- sending -----------------------------------------------------------

    def _alloc_tag(self, fut: Future) -> int:
        with self._lock:
            if self._closed is not None:
                raise ConnectionClosed(str(self._closed))
            for _ in range(MAX_TAG + 1):
                tag = self._next_tag
                self._next_tag = (self._next_tag + 1) % (MAX_TAG + 1)
                if tag not in self._pending and tag not in self._flushing:
                    self._pending[tag] = fut
                    return tag
        raise ConnectionClosed("all 65535 tags are in use")

    def rpc_async(self, cls: type[m.Message], *args, **kwargs) -> Future:
        """Send a request; the Future resolves to the reply or raises P9Error et al.

        The future carries `.tag` (for flush) and `.request`. Tversion goes under NOTAG.
        """
        return self._send_async(cls, args, kwargs, notag=cls is m.Tversion)

    def rpc_tagged_async(self, cls: type[m.Message], *args, **kwargs) -> Future:
        """rpc_async under an ordinary tag even for Tversion (Mini-OS sends it so)."""
        return self._send_async(cls, args, kwargs, notag=False)

    def _send_async(self, cls, args, kwargs, notag: bool) -> Future:
        fut: Future = Future()
        fut.reply_type = m.BY_TYPE.get(cls.TYPE + 1)
        if notag:
            tag = m.NOTAG
            with self._lock:
                if self._closed is not None:
                    raise ConnectionClosed(str(self._closed))
                if m.NOTAG in self._pending:
                    raise RuntimeError("a Tversion is already outstanding")
                self._pending[tag] = fut
        else:
            tag = self._alloc_tag(fut)
        try:
            msg = cls(tag, *args, **kwargs)
            fut.tag = tag
            fut.request = msg
            self.send_frame(m.encode(msg))
        except BaseException:
            with self._lock:
                self._pending.pop(tag, None)
            raise
        return fut

    def rpc_raw_async(self, make_frame, reply_type: type[m.Message] | None = None) -> Future:
        """Send a hand-made frame under a fresh tag: `make_frame(tag) -> bytes`.

        For tests of what the codec refuses to build; the Future resolves like rpc_async's.
        """
        fut: Future = Future()
        fut.reply_type = reply_type
        tag = self._alloc_tag(fut)
        fut.tag = tag
        fut.request = f"raw frame (tag {tag})"
        try:
            self.send_frame(make_frame(tag))
        except BaseException:
            with self._lock:
                self._pending.pop(tag, None)
            raise
        return fut

    def send_frame(self, frame: bytes) -> None:
        """Send one encoded frame as is (tests use this for hand-made frames)."""
        with self._send_lock:
            self.transport.send(frame)

    def wait(self, fut: Future, timeout: float | None = None):
        t = self.timeout if timeout is None else timeout
        try:
            return fut.result(timeout=t)
        except TimeoutError as e:
            if isinstance(e, RpcTimeout):
                raise
            if fut.done():
                raise
            raise RpcTimeout(f"no reply to {getattr(fut, 'request', '?')!r} within {t} s") from None

    def rpc(self, cls: type[m.Message], *args, timeout: float | None = None, **kwargs) -> m.Message:
        return self.wait(self.rpc_async(cls, *args, **kwargs), timeout)

    def flush(self, tag: int, timeout: float | None = None) -> None:
        """Tflush `tag` and wait for Rflush. The flushed request's future then resolves
        with its reply if the server answered first, else raises Flushed."""
        with self._lock:
            self._flushing.add(tag)
        try:
            self.rpc(m.Tflush, tag, timeout=timeout)
        except BaseException:
            raise
        else:
            with self._lock:
                self._flushing.discard(tag)
                fut = self._pending.pop(tag, None)
            if fut is not None and not fut.done():
                fut.set_exception(Flushed(f"tag {tag} flushed"))

    # --- receiving ---------------------------------------------------------

    def _read_loop(self) -> None:
        reason: BaseException = ConnectionClosed("connection closed by peer")
        try:
            while True:
                frame = self.transport.recv_frame()
                if frame is None:
                    break
                self._dispatch(frame)
        except BaseException as e:  # noqa: BLE001 - any reader failure ends the connection
            log.debug("9P reader stopped: %r", e)
            reason = ConnectionClosed(f"reader stopped: {e!r}")
        self._fail_all(reason)

    def _dispatch(self, frame: bytes) -> None:
        try:
            _, _, tag = m.peek_header(frame)
        except DecodeError:
            log.warning("undecodable reply header; ignored")
            return
        with self._lock:
            # A reply that races its Tflush is delivered; the tag itself stays
            # reserved (in _flushing) until the Rflush arrives.
            fut = self._pending.pop(tag, None)
        if fut is None:
            log.warning("reply with unknown tag %d ignored", tag)
            return
        if fut.done():
            return
        try:
            reply = m.decode(frame)
        except DecodeError as e:
            fut.set_exception(UnexpectedReply(f"undecodable reply: {e}"))
            return
        if isinstance(reply, m.Rlerror):
            fut.set_exception(P9Error(reply.ecode))
        elif isinstance(reply, m.Rerror):  # 9P2000.u: the text is the server's, errno its number
            fut.set_exception(P9Error(reply.ecode or errno.EIO, reply.ename, ename=reply.ename))
        elif fut.reply_type is not None and not isinstance(reply, fut.reply_type):
            fut.set_exception(UnexpectedReply(f"{reply!r} in reply to {fut.request!r}"))
        else:
            fut.set_result(reply)

    def _fail_all(self, reason: BaseException) -> None:
        with self._lock:
            self._closed = reason
            pending = list(self._pending.values())
            self._pending.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(ConnectionClosed(str(reason)))

    # --- lifetime ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        self.transport.close()
        self._reader.join(timeout=5)
        self._fail_all(ConnectionClosed("client closed"))
