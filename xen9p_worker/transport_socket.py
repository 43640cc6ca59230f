"""The socket transport: Unix/TCP listeners or an inherited fd, one 9P session per connection.

A reader thread per connection splits the stream into frames and submits them;
replies are written whole under a per-connection lock from whichever thread ends the request.
"""
from __future__ import annotations

import logging
import os
import selectors
import socket
import threading

from xen9p_common.errors import DecodeError
from xen9p_common.p9 import FrameBuffer

log = logging.getLogger("xen9p.socket")


class Connection:
    """One accepted socket and its session."""

    def __init__(self, server, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.session = server.session()
        self._send_mu = threading.Lock()
        self._closed = False
        self._max_frame = server.msize_cap
        self.thread = threading.Thread(target=self._serve, name=f"9p-conn-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def reply(self, frame) -> None:
        with self._send_mu:
            if self._closed:
                return
            try:
                self.sock.sendall(frame)
            except OSError as e:
                log.debug("%s: send failed: %s", self.name, e)

    def _serve(self) -> None:
        fb = FrameBuffer(max_size=self._max_frame)
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                fb.feed(data)
                for frame in fb.frames():
                    self.session.submit(frame, self.reply)
        except DecodeError as e:
            log.warning("%s: unframeable stream, disconnecting: %s", self.name, e)
        except OSError as e:
            log.debug("%s: receive failed: %s", self.name, e)
        finally:
            self.close()

    def close(self) -> None:
        with self._send_mu:
            if self._closed:
                return
            self._closed = True
        self.session.close()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def parse_listen(spec: str) -> tuple[str, object]:
    """'unix:PATH', 'tcp:HOST:PORT' or 'fd:N' -> (kind, address); ValueError if malformed."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"--listen {spec!r}: expected unix:PATH, tcp:HOST:PORT or fd:N")
    if kind == "unix":
        return kind, rest
    if kind == "tcp":
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"--listen {spec!r}: expected tcp:HOST:PORT")
        return kind, (host.strip("[]") or "127.0.0.1", int(port))
    if kind == "fd":
        if not rest.isdigit():
            raise ValueError(f"--listen {spec!r}: expected fd:N")
        return kind, int(rest)
    raise ValueError(f"--listen {spec!r}: unknown kind {kind!r}")


def open_listener(kind: str, addr) -> socket.socket:
    if kind == "unix":
        try:
            os.unlink(addr)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(addr)
        s.listen(64)
        return s
    if kind == "tcp":
        s = socket.create_server(addr, family=socket.AF_INET6 if ":" in addr[0] else socket.AF_INET,
                                 backlog=64, reuse_port=False)
        return s
    s = socket.socket(fileno=addr)
    return s


class SocketTransport:
    """Serves a listening socket (or one inherited connected socket) until stop() is called."""

    def __init__(self, server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.conns: set[Connection] = set()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stop = False
        self._n = 0

    def stop(self) -> None:
        """Safe from a signal handler: sets a flag and wakes the loop."""
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def serve(self) -> None:
        listening = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        if listening:
            self.sock.setblocking(False)
            sel.register(self.sock, selectors.EVENT_READ)
        else:
            self._add(self.sock)
        try:
            while not self._stop:
                for key, _ in sel.select(timeout=1.0 if listening else 0.2):
                    if key.fileobj is self.sock:
                        self._accept()
                self._reap()
                if not listening and not self.conns:
                    break  # the one inherited connection has ended
        finally:
            sel.close()
            for c in list(self.conns):
                c.close()
            self.sock.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(True)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._add(conn)

    def _add(self, conn: socket.socket) -> None:
        self._n += 1
        c = Connection(self.server, conn, f"conn{self._n}")
        self.conns.add(c)
        c.start()

    def _reap(self) -> None:
        for c in [c for c in self.conns if not c.thread.is_alive()]:
            self.conns.discard(c)
