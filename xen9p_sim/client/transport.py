"""The byte transport under the 9P client: one whole frame per send(), one per recv_frame().

A socket implementation lives here; the Xen ring transport implements the same three calls.
"""
from __future__ import annotations

import socket
from abc import ABC, abstractmethod

from xen9p_common.errors import DecodeError
from xen9p_common.p9.stream import FrameBuffer
from xen9p_sim.client.errors import ConnectionClosed


class Transport(ABC):
    """What the client needs from a transport.

    send() always receives one complete frame (so a transport may peek the tag,
    e.g. to pick ring `tag % num_rings`). recv_frame() blocks until one complete
    frame arrives and returns it, or returns None once the peer has closed.
    recv_frame() is called from one thread only (the client's reader); send()
    is serialised by the client. close() must wake a blocked recv_frame().
    """

    @abstractmethod
    def send(self, frame: bytes) -> None: ...

    @abstractmethod
    def recv_frame(self) -> bytes | None: ...

    @abstractmethod
    def close(self) -> None: ...


class SocketTransport(Transport):
    """9P frames over a connected stream socket (Unix or TCP)."""

    RECV_CHUNK = 1 << 20

    def __init__(self, sock: socket.socket, max_frame: int = 1 << 24) -> None:
        self.sock = sock
        self._frames = FrameBuffer(max_frame)
        self._ready: list[bytes] = []
        self._closed = False

    @classmethod
    def connect_unix(cls, path: str, timeout: float = 10.0) -> "SocketTransport":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls._connect(s, path, timeout)

    @classmethod
    def connect_tcp(cls, host: str, port: int, timeout: float = 10.0) -> "SocketTransport":
        s = socket.create_connection((host, port), timeout=timeout)
        s.settimeout(None)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(s)

    @classmethod
    def _connect(cls, s: socket.socket, addr, timeout: float) -> "SocketTransport":
        try:
            s.settimeout(timeout)
            s.connect(addr)
            s.settimeout(None)
        except BaseException:
            s.close()
            raise
        return cls(s)

    def send(self, frame: bytes) -> None:
        if self._closed:
            raise ConnectionClosed("transport is closed")
        try:
            self.sock.sendall(frame)
        except OSError as e:
            raise ConnectionClosed(f"send failed: {e}") from e

    def recv_frame(self) -> bytes | None:
        while not self._ready:
            try:
                data = self.sock.recv(self.RECV_CHUNK)
            except OSError:
                return None
            if not data:
                return None
            self._frames.feed(data)
            try:
                self._ready.extend(self._frames.frames())
            except DecodeError:
                # A stream whose framing is broken cannot be resynchronised.
                return None
        return self._ready.pop(0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # shutdown (not just close) so a reader blocked in recv() wakes up.
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
