"""A simulated 9pfs frontend that behaves like Mini-OS's 9pfront (Xenstore-stubdom's): one ring, xenbus its way.

Initialised goes in the ring transaction; shutdown wants the backend's Closing before it writes Closed; a kexec
live update keeps the ring, event channel and indexes. minios_session.py speaks its 9P2000.u over the ring.
"""
from __future__ import annotations

import logging

from xen9p_common.ring import ring_size
from xen9p_common.xenbus import XenbusState
from xen9p_sim.frontend.linux import SimFrontend
from xen9p_sim.frontend.ring import FrontendError
from xen9p_sim.frontend.transport import RingTransport

log = logging.getLogger("xen9p.sim.frontend")

MINIOS_NUM_RINGS = 1
MINIOS_MAX_RING_ORDER = 4  # 16 KiB msize: half of a 32 KiB ring half


class MiniOSFrontend(SimFrontend):
    """Mini-OS 9pfront's xenbus: one transaction with Initialised, exact states, no reconnect, live update.

    `closing_answer` records what the backend answered our Closing with (Mini-OS requires Closing).
    """

    INITIALISED_IN_TX = True
    FOLLOWS_BACKEND_CLOSE = False  # Mini-OS has no handling of a backend-initiated close
    # It waits for the backend to reach at least InitWait and then requires exactly InitWait.
    INITWAIT_FAIL_ON = frozenset(s for s in XenbusState if s > XenbusState.InitWait)

    def __init__(self, sim_dir: str, domid: int, tag: str | None = None, devid: int | None = None,
                 **kw) -> None:
        kw["num_rings"] = MINIOS_NUM_RINGS
        super().__init__(sim_dir, domid, tag, devid, **kw)
        self.closing_answer: XenbusState | None = None
        self.live_updates = 0

    def _read_features(self) -> tuple[int, int]:
        versions = (self.xs.read(f"{self.backend}/versions") or "").split(",")
        if "1" not in versions:  # any list that names transport version 1 will do
            raise FrontendError(f"{self.name}: backend versions {versions!r} do not include 1")
        if self._feature("max-rings") < MINIOS_NUM_RINGS:
            raise FrontendError(f"{self.name}: backend offers no ring")
        return MINIOS_NUM_RINGS, min(self._feature("max-ring-page-order"), MINIOS_MAX_RING_ORDER)

    def _maxsize(self, order: int) -> int:
        return ring_size(order) // 2

    def disconnect(self) -> None:
        """Closing; the backend must answer Closing (straight to Closed is an error); then Closed.

        Raises FrontendError (after the rings are released) if the backend answered otherwise.
        """
        self._stop_monitor()
        if self.transport is not None:
            self.transport.close()
        wrong = None
        try:
            if self.state in (XenbusState.Initialised, XenbusState.Connected):
                self._switch(XenbusState.Closing)
                if not self.misbehave.hasty_close:
                    try:
                        self.closing_answer = self.wait_backend(
                            {XenbusState.Closing}, fail_on={s for s in XenbusState if s > XenbusState.Closing})
                    except FrontendError as e:
                        self.closing_answer = self.backend_state()
                        wrong = e
                self._switch(XenbusState.Closed)
        finally:
            self._release_rings()
        if wrong is not None:
            raise FrontendError(f"{wrong}: Mini-OS's shutdown needs the backend's Closing before Closed")

    def reconnect(self) -> RingTransport:
        raise FrontendError(f"{self.name}: Mini-OS's 9pfront does not reconnect")

    def live_update(self) -> RingTransport:
        """kexec into a new kernel: it re-uses the ring, event channel and indexes; xenbus sees nothing.

        The old kernel's 9P session must be closed first (its reader stopped); the new kernel's transport
        re-reads the indexes from the shared page. Its session then sends Tversion only and keeps fid 0.
        """
        if self.state is not XenbusState.Connected or self.transport is None:
            raise FrontendError(f"{self.name}: live update needs a connected device")
        old = self.transport
        old.close()
        old.release()
        for r in self.rings:
            r.reload()
        self.transport = self._new_transport()
        self.live_updates += 1
        log.info("%s: live update: the new kernel took over ring %s", self.name,
                 ", ".join(str(r.intf_ref) for r in self.rings))
        return self.transport
