"""How a simulated frontend misbehaves for tests: a hostile handshake, and garbage on a connected ring.

Misbehave is read by the handshake; MisbehaviourMixin gives SimFrontend the inject_* / vanish methods.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Callable

from xen9p_sim.client import Client
from xen9p_common.errors import Xen9pError
from xen9p_common.p9 import messages as m
from xen9p_common.ring import IntfLayout
from xen9p_sim.frontend.ring import FrontendError, GuestRing


@dataclass
class Misbehave:
    """Ways a hostile or broken guest departs from Linux's handshake (None/False = behave)."""

    version: str | None = None       # written as `version` instead of "1"
    num_rings: int | None = None     # written as `num-rings` (0, 9, ...) instead of 2
    ring_order: int | None = None    # written in each intf page instead of min(backend max, 9)
    ref_zero: bool = False           # ring-ref0 = 0
    evtchn_zero: bool = False        # event-channel-0 = 0
    never_consume: bool = False      # the transport never takes replies off the rings
    hasty_close: bool = False        # unmount writes Closing and Closed back to back, waiting for nothing


class MisbehaviourMixin:
    """SimFrontend's ways to break a connected ring (uses its rings, evtchn, transport, xs and memory)."""

    def _ring(self, index: int) -> GuestRing:
        if not self.rings:
            raise FrontendError(f"{self.name}: not connected")
        return self.rings[index]

    def inject_garbage_size(self, ring: int = 0, size: int = 3) -> None:
        """Publish a 'request' whose size field is `size` (below 7 or beyond the ring)."""
        r = self._ring(ring)
        with r.lock:
            if not r.fr.write_request(struct.pack("<IBH", size & 0xFFFFFFFF, m.Tgetattr.TYPE, 1)):
                raise FrontendError("no room for the garbage header")
            self.evtchn.notify(r.port)

    def inject_index_beyond_ring(self, ring: int = 0) -> None:
        """Move out_prod more than a whole ring past out_cons."""
        r = self._ring(ring)
        with r.lock:
            cons = struct.unpack_from("<I", r.intf_view, IntfLayout.OUT_CONS)[0]
            struct.pack_into("<I", r.intf_view, IntfLayout.OUT_PROD,
                             (cons + r.fr.size + 4096) & 0xFFFFFFFF)
            r.reload()
            self.evtchn.notify(r.port)

    def inject_half_request(self, frame: bytes, ring: int = 0) -> Callable[[], None]:
        """Write `frame` whole but publish only its first half; returns a function publishing the rest."""
        r = self._ring(ring)
        half = max(4, len(frame) // 2)
        with r.lock:
            prod = r.fr.out_prod
            if not r.fr.write_request(frame):
                raise FrontendError("no room for the half request")
            struct.pack_into("<I", r.intf_view, IntfLayout.OUT_PROD, (prod + half) & 0xFFFFFFFF)
            r.reload()
            self.evtchn.notify(r.port)

        def complete() -> None:
            with r.lock:
                struct.pack_into("<I", r.intf_view, IntfLayout.OUT_PROD, (prod + len(frame)) & 0xFFFFFFFF)
                r.reload()
                self.evtchn.notify(r.port)
        return complete

    def vanish(self, frame: bytes | None = None, ring: int = 0) -> None:
        """Publish a request (if given) and disappear: no state change, ports closed, memory kept."""
        if frame is not None and self.rings:
            r = self._ring(ring)
            with r.lock:
                r.fr.write_request(frame)
                self.evtchn.notify(r.port)
        self._monitor_stop.set()
        if self.transport is not None:
            self.transport.close()
        if self.evtchn is not None:
            self.evtchn.close()
            self.evtchn = None
        for r in self.rings:
            r.drop_views()  # grants stay: a dead guest's pages are the backend's to unmap
        self.rings = []
        if self._own_xs:
            self.xs.close()
        if self._own_mem and self._mem is not None:
            self._mem.close()


def flood_tflush(client: Client, count: int, seed: int = 0) -> int:
    """Send `count` Tflush for random old tags at once; returns how many Rflush came back."""
    rnd = random.Random(seed)
    futs = [client.rpc_async(m.Tflush, rnd.randrange(0, 0xFFFF)) for _ in range(count)]
    done = 0
    for f in futs:
        try:
            client.wait(f)
            done += 1
        except Xen9pError:
            pass
    return done
