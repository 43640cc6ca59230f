"""The 9P client's transport over a simulated frontend's rings: ring = tag % num_rings, whole messages.

Replies are picked up on event-channel wakeups; a ring the backend breaks closes the transport.
"""
from __future__ import annotations

import collections
import os
import select
import struct
import threading
import time

from xen9p_sim.client.errors import ConnectionClosed
from xen9p_sim.client.transport import Transport
from xen9p_common.errors import RingError
from xen9p_common.ring import HEADER_SIZE
from xen9p_common.platform.sim.evtchn import SimEventChannels
from xen9p_sim.frontend.ring import POLL, GuestRing


class RingTransport(Transport):
    """The 9P client's transport over the rings: ring = tag % num_rings, whole requests, whole replies."""

    def __init__(self, rings: list[GuestRing], evtchn: SimEventChannels, maxsize: int,
                 *, never_consume: bool = False, send_timeout: float = 30.0,
                 whole_replies_only: bool = False) -> None:
        self.rings = rings
        # A frontend that reads a reply's `size` bytes as soon as its header shows (Unikraft) reads
        # garbage if the backend publishes a reply in pieces: with this set, such a ring breaks.
        self.whole_replies_only = whole_replies_only
        self.evtchn = evtchn
        self.maxsize = maxsize
        self.never_consume = never_consume
        self.send_timeout = send_timeout
        self.requests = 0
        self.replies = 0
        self._ready: collections.deque[bytes] = collections.deque()
        self._closed = False
        self._error: str | None = None
        self._progress = threading.Condition()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def closed(self) -> bool:
        return self._closed

    def ring_for(self, tag: int) -> GuestRing:
        return self.rings[tag % len(self.rings)]

    def send(self, frame: bytes) -> None:
        if self._closed:
            raise ConnectionClosed(self._error or "ring transport is closed")
        if not self.rings:
            raise ConnectionClosed("no rings")
        tag = struct.unpack_from("<H", frame, 5)[0] if len(frame) >= 7 else 0
        ring = self.ring_for(tag)
        deadline = time.monotonic() + self.send_timeout
        with ring.lock:
            while True:
                try:
                    if ring.fr.write_request(frame):
                        break
                except RingError as e:
                    self._fail(f"ring broken by the backend: {e}")
                    raise ConnectionClosed(str(e)) from e
                if self._closed:
                    raise ConnectionClosed(self._error or "ring transport is closed")
                if time.monotonic() >= deadline:
                    raise ConnectionClosed(f"no room in the ring for {len(frame)} bytes "
                                           f"within {self.send_timeout} s")
                with self._progress:
                    self._progress.wait(POLL)
            self.requests += 1
            self.evtchn.notify(ring.port)  # Linux notifies after every request

    def _scan(self) -> None:
        for ring in self.rings:
            got = False
            while True:
                if self.whole_replies_only:
                    _check_whole(ring)
                reply = ring.fr.read_reply()
                if reply is None:
                    break
                self._ready.append(reply)
                got = True
            if got:
                self.evtchn.notify(ring.port)  # in_cons moved: the backend may wait for room

    def recv_frame(self) -> bytes | None:
        fds = [self.evtchn.fileno(), self._wake_r]
        while True:
            if self._ready:
                self.replies += 1
                return self._ready.popleft()
            if self._closed:
                return None
            if not self.never_consume:
                try:
                    self._scan()
                except RingError as e:
                    self._fail(f"backend broke the ring: {e}")
                    return None
                except (AttributeError, ValueError):
                    if self._closed:  # the rings were released under us while closing
                        return None
                    raise
                if self._ready:
                    continue
            try:
                select.select(fds, [], [], 0.5)
                for port in self.evtchn.pending():
                    self.evtchn.unmask(port)
            except (OSError, ValueError):
                if self._closed:
                    return None
                raise
            with self._progress:
                self._progress.notify_all()

    def _fail(self, why: str) -> None:
        if self._error is None:
            self._error = why
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        with self._progress:
            self._progress.notify_all()

    def release(self) -> None:
        """Close the wake pipe (after the reader thread has stopped)."""
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1



def _check_whole(ring: GuestRing) -> None:
    """RingError if a reply's header is visible but not the whole reply (it was published in pieces)."""
    fr = ring.fr
    avail = fr.replies_queued()
    if avail < HEADER_SIZE:
        return
    size = ring.reply_size_at_cons()
    if size > avail:
        raise RingError(msg=f"reply of {size} bytes published with only {avail} queued")
