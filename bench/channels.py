"""Guest-side byte channels the load generator speaks 9P over: a Unix socket, or one sim Xen ring.

A channel sends whole frames and returns every whole reply that has arrived (blocking until one has).
"""
from __future__ import annotations

import mmap
import os
import select
import socket
import struct

from xen9p_common.errors import RingError
from xen9p_common.p9 import messages as m
from xen9p_common.ring import FrontendRing, ring_size

_U32 = struct.Struct("<I")
PAGE = 4096
_M32 = 0xFFFFFFFF
_RREAD = m.Rread.TYPE
_RREAD_HDR = 11  # size type tag count


class ReplyReader:
    """The guest's reply side of one ring, cheap enough not to be what the bench measures.

    Takes every whole reply queued and frees its room with one in_cons store. An Rread yields
    only its 11-byte header (a guest copies the payload straight to its page cache; the bench
    only counts it), any other reply a copy of the whole frame.
    """

    def __init__(self, intf: memoryview, data: memoryview, order: int) -> None:
        mv = memoryview(intf)
        self._iw = mv[:len(mv) & ~3].cast("I")  # native u32 words: one aligned load/store each
        self._size = ring_size(order)
        self._mask = self._size - 1
        self._in = data[:self._size]
        self._cons = self._iw[0]

    def _bytes(self, pos: int, n: int) -> bytes:
        end = pos + n
        if end <= self._size:
            return bytes(self._in[pos:end])
        return bytes(self._in[pos:]) + bytes(self._in[:end - self._size])

    def take(self) -> list:
        prod = self._iw[1]
        cons = self._cons
        avail = (prod - cons) & _M32
        if avail > self._size:
            raise RingError(msg=f"in_prod {prod:#x} is {avail} bytes past in_cons, ring holds {self._size}")
        out = []
        while avail >= 7:
            pos = cons & self._mask
            head = self._bytes(pos, 7)
            size = _U32.unpack_from(head, 0)[0]
            if size < 7 or size > self._size:
                raise RingError(msg=f"reply size {size} outside [7, {self._size}]")
            if size > avail:
                break  # a backend publishes whole replies; the rest is not visible yet
            if head[4] == _RREAD and size >= _RREAD_HDR:
                out.append(self._bytes(pos, _RREAD_HDR))
            else:
                out.append(self._bytes(pos, size))
            cons = (cons + size) & _M32
            avail -= size
        if cons != self._cons:
            self._cons = cons
            self._iw[0] = cons
        return out

    def release(self) -> None:
        self._iw.release()
        self._in.release()


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
        self.replies = ReplyReader(self._intf, self._data, order)
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

    def recv(self) -> list:
        """Whole replies (an Rread as its header only: see ReplyReader)."""
        ev = self.evtchn
        fd = ev.fileno()
        take = self.replies.take
        while True:
            if self._backlog:
                self._push_backlog()
            frames = take()
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
            self.replies.release()
        self.ring = None
        self._intf.release()
        self._data.release()
        try:
            self._map.close()
        except BufferError:
            pass
