"""One client connection of the simulated xenstored: frames in on a reader thread, replies out via a queue.

A client that stops reading its replies and events is dropped once the queue reaches the quota.
"""
from __future__ import annotations

import logging
import socket
import threading
from collections import deque

from xen9p_common.platform.xsproto import FrameReader, WireError
from xen9p_sim.xenstore.store import Tx
from xen9p_sim.xenstore.watches import Watch

log = logging.getLogger("xen9p.sim.xenstored")


class Conn:
    """One client connection: a reader thread, an output queue drained by a writer thread."""

    def __init__(self, server, sock: socket.socket, domid: int) -> None:
        self.server = server
        self.sock = sock
        self.domid = domid
        self.watches: list[Watch] = []
        self.txs: dict[int, Tx] = {}
        self.out: deque[bytes] = deque()
        self.out_cv = threading.Condition()
        self.closed = False
        self.reader = threading.Thread(target=self._read_loop, daemon=True, name=f"xs-conn-d{domid}")
        self.writer = threading.Thread(target=self._write_loop, daemon=True, name=f"xs-write-d{domid}")

    @property
    def privileged(self) -> bool:
        return self.domid == 0

    def start(self) -> None:
        self.writer.start()  # first: the reader joins it on exit
        self.reader.start()

    def send(self, data: bytes) -> None:
        with self.out_cv:
            if self.closed:
                return
            if len(self.out) >= self.server.quotas.max_outstanding:
                log.warning("dom%d connection does not read its replies/events: dropping it", self.domid)
                self._close_locked()
                return
            self.out.append(data)
            self.out_cv.notify()

    def close(self) -> None:
        with self.out_cv:
            self._close_locked()

    def _close_locked(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.out_cv.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write_loop(self) -> None:
        try:
            while True:
                with self.out_cv:
                    while not self.out and not self.closed:
                        self.out_cv.wait()
                    if self.closed:
                        return
                    data = self.out.popleft()
                self.sock.sendall(data)
        except OSError:
            self.close()

    def _read_loop(self) -> None:
        frames = FrameReader()
        try:
            while not self.closed:
                data = self.sock.recv(65536)
                if not data:
                    break
                for msg in frames.feed(data):
                    self.server.handle(self, msg)
        except WireError as e:
            log.info("dom%d sent a malformed frame (%s): closing its connection", self.domid, e)
        except OSError:
            pass
        finally:
            self.close()
            self.server.forget(self)
            self.writer.join(5)
            self.sock.close()
