"""Guest-side byte channels the load generator speaks 9P over: a Unix socket, or one sim Xen ring.

A channel sends whole frames and returns every whole reply that has arrived (blocking until one has).
"""
from __future__ import annotations

import mmap
import os
import select
import socket
import struct

from xen9p_common.ring import FrontendRing

_U32 = struct.Struct("<I")
PAGE = 4096


class SocketChannel:
    """9P over a connected Unix stream socket (diod, or the xen9p socket transport)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self._buf = bytearray()
        self._out: list = []

    def send(self, frame) -> None:
        self._out.append(frame)

    def flush(self) -> None:
        if self._out:
            # One sendall per batch: the generator, not the server, would otherwise pay per syscall.
            self.sock.sendall(b"".join(self._out) if len(self._out) > 1 else self._out[0])
            self._out.clear()

    def recv(self) -> list[memoryview]:
        self.flush()
        frames: list[memoryview] = []
        while not frames:
            data = self.sock.recv(1 << 22)
            if not data:
                raise ConnectionError("server closed the connection")
            if self._buf:
                self._buf += data
                data = bytes(self._buf)
                self._buf.clear()
            # Frames are views into the received bytes: no copy per frame.
            view = memoryview(data)
            off, n = 0, len(data)
            while n - off >= 4:
                size = _U32.unpack_from(data, off)[0]
                if size < 7:
                    raise ConnectionError(f"bad frame size {size}")
                if n - off < size:
                    break
                frames.append(view[off:off + size])
                off += size
            if off < n:
                self._buf += view[off:]
        return frames

    def close(self) -> None:
        self.sock.close()


class RingChannel:
    """One ring of a simulated guest: FrontendRing over the domain's pages, one event-channel port.

    The pages are the guest's own memory file (the bench created the rings and granted them);
    this process owns the ring's port, so the worker's notifications wake it.
    """

    def __init__(self, sim_dir: str, domid: int, intf_frame: int, data_frame: int, order: int,
                 evtchn) -> None:
        from xen9p_common.platform.sim.grants import pages_path
        fd = os.open(pages_path(sim_dir, domid), os.O_RDWR | os.O_CLOEXEC)
        try:
            self._map = mmap.mmap(fd, 0, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        view = memoryview(self._map)
        self._intf = view[intf_frame * PAGE:(intf_frame + 1) * PAGE]
        self._data = view[data_frame * PAGE:(data_frame + (1 << order)) * PAGE]
        self.ring = FrontendRing(self._intf, self._data, order)
        self.evtchn = evtchn
        self.port = 0
        self._backlog: list = []

    def send(self, frame) -> None:
        if self._backlog or not self.ring.write_request(frame):
            self._backlog.append(bytes(frame))
            return
        self.evtchn.notify(self.port)  # as Linux: notify after every request

    def flush(self) -> None:
        pass

    def _push_backlog(self) -> None:
        while self._backlog and self.ring.write_request(self._backlog[0]):
            self._backlog.pop(0)
            self.evtchn.notify(self.port)

    def recv(self) -> list[memoryview]:
        ring, ev = self.ring, self.evtchn
        fd = ev.fileno()
        while True:
            if self._backlog:
                self._push_backlog()
            frames = []
            while True:
                r = ring.read_reply()
                if r is None:
                    break
                frames.append(memoryview(r))
            if frames:
                ev.notify(self.port)  # in_cons moved: a backend waiting for room may go on
                return frames
            # A full out ring is drained without a word to us: re-check room often meanwhile.
            select.select([fd], [], [], 0.001 if self._backlog else 1.0)
            for p in ev.pending():
                ev.unmask(p)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.release()
        self.ring = None
        self._intf.release()
        self._data.release()
        try:
            self._map.close()
        except BufferError:
            pass
