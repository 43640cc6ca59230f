"""The socket transport: Unix/TCP listeners or an inherited fd, one 9P session per connection.

A reader thread per connection splits the stream into frames and submits them;
replies are written whole under a per-connection lock from whichever thread ends the request.
Rread is read from the file straight into a reusable reply buffer (the dispatcher's `alloc`)
and sent from it; a big request frame is received straight into its own buffer.
"""
from __future__ import annotations

import logging
import os
import selectors
import socket
import struct
import threading

from xen9p_common.errors import DecodeError
from xen9p_common.p9 import messages as M

log = logging.getLogger("xen9p.socket")

_U32 = struct.Struct("<I")
_RECV_SIZE = 256 * 1024   # the reader's buffer; frames that fit are copied out of it once
_DIRECT = 16 * 1024       # a partial frame at least this big is received into its own buffer
_TREAD = M.Tread.TYPE


class Connection:
    """One accepted socket and its session."""

    def __init__(self, server, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.session = server.session()
        self._send_mu = threading.Lock()
        self._closed = False
        self._max_frame = server.msize_cap
        self.read_bufs: list[bytearray] = []  # free Rread buffers; at most one per concurrent Tread
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
        try:
            self._read_frames()
        except DecodeError as e:
            log.warning("%s: unframeable stream, disconnecting: %s", self.name, e)
        except OSError as e:
            log.debug("%s: receive failed: %s", self.name, e)
        finally:
            self.close()

    def _read_frames(self) -> None:
        buf = bytearray(_RECV_SIZE)
        mv = memoryview(buf)
        recv_into = self.sock.recv_into
        have = 0
        while True:
            n = recv_into(mv[have:])
            if not n:
                return
            have += n
            start = 0
            while have - start >= 4:
                (size,) = _U32.unpack_from(buf, start)
                if size < M.HEADER_SIZE:
                    raise DecodeError(f"frame size {size} is below the 7-byte header")
                if size > self._max_frame:
                    raise DecodeError(f"frame of {size} bytes exceeds the limit {self._max_frame}")
                if have - start < size:
                    break
                self._submit(bytes(mv[start:start + size]))
                start += size
            if have - start >= 4 and (size >= _DIRECT or size > _RECV_SIZE - start):
                # A big frame (a Twrite): the rest goes straight into its own buffer.
                frame = bytearray(size)
                got = have - start
                frame[:got] = mv[start:have]
                fmv = memoryview(frame)
                while got < size:
                    n = recv_into(fmv[got:])
                    if not n:
                        return
                    got += n
                self._submit(frame)
                have = 0
            elif start:
                rest = bytes(mv[start:have])
                mv[:len(rest)] = rest
                have = len(rest)

    def _submit(self, frame) -> None:
        if frame[4] == _TREAD:
            r = _ReadReply(self)
            self.session.submit(frame, r.reply, r.alloc)
        else:
            self.session.submit(frame, self.reply)

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


class _ReadReply:
    """One Tread's reply: alloc() lends a connection buffer the handler reads into; reply() sends it back."""

    __slots__ = ("conn", "buf")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.buf = None

    def alloc(self, size: int) -> list:
        bufs = self.conn.read_bufs
        try:
            buf = bufs.pop()  # list.pop/append are atomic: no lock for the free list
        except IndexError:
            buf = None
        if buf is None or len(buf) < size:
            buf = bytearray(max(size, 64 * 1024 + 24))
        self.buf = buf
        return [memoryview(buf)[:size]]

    def reply(self, frame) -> None:
        buf, self.buf = self.buf, None
        try:
            if isinstance(frame, int):
                with memoryview(buf) as v:
                    self.conn.reply(v[:frame])
            else:
                self.conn.reply(frame)
        finally:
            if buf is not None:
                self.conn.read_bufs.append(buf)


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
        # This transport's alloc never waits, so a Tread may start on the reader thread: it is
        # served there when the page cache holds the data (t_read), else handed to the pool.
        server.inline = server.inline | {M.Tread}
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
