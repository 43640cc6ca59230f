"""A simulated Xen 9pfs frontend that behaves like Linux net/9p/trans_xen.c, with knobs to misbehave.

It negotiates over the sim xenstore as the guest domain, grants its rings from SimDomainMemory and gives the 9P client a RingTransport.
"""
from __future__ import annotations

import errno
import logging
import threading
import time

from xen9p_sim.client import Client, Fid
from xen9p_common.errors import Xen9pError, XenStoreError
from xen9p_common.xenbus import XenbusState, parse_state
from xen9p_common.platform import XenStore
from xen9p_common.platform.sim import sim_paths
from xen9p_common.platform.sim.evtchn import SimEventChannels
from xen9p_sim.frontend.misbehave import Misbehave, MisbehaviourMixin, flood_tflush
from xen9p_sim.frontend.ring import (LINUX_DEFAULT_MSIZE, LINUX_MAX_RING_ORDER, LINUX_MAXSIZE, LINUX_NUM_RINGS,
                            FrontendError, GuestRing, transport_maxsize)
from xen9p_sim.frontend.transport import RingTransport
from xen9p_common.platform.sim.grants import SimDomainMemory

__all__ = ["LINUX_DEFAULT_MSIZE", "LINUX_MAX_RING_ORDER", "LINUX_MAXSIZE", "LINUX_NUM_RINGS", "FRONTEND_KIND",
           "FrontendError", "Misbehave", "RingTransport", "SimFrontend", "domain_socket", "find_devid",
           "flood_tflush", "frontend_dir", "mount", "transport_maxsize"]

log = logging.getLogger("xen9p.sim.frontend")

FRONTEND_KIND = "9pfs"  # the frontend dir is always device/9pfs, whatever the backend kind


def domain_socket(sim_dir: str, domid: int) -> str:
    """The sim xenstored socket through which a connection acts as guest `domid`."""
    return f"{sim_paths(sim_dir)['xenstored']}.d{domid}"


def frontend_dir(domid: int, devid: int) -> str:
    return f"/local/domain/{domid}/device/{FRONTEND_KIND}/{devid}"


def find_devid(xs: XenStore, domid: int, tag: str) -> int:
    """The devid of this domain's 9pfs device whose frontend `tag` is `tag`."""
    base = f"/local/domain/{domid}/device/{FRONTEND_KIND}"
    try:
        devids = xs.list(base)
    except XenStoreError as e:
        if e.errno != errno.ENOENT:
            raise
        devids = []
    for d in sorted(devids, key=lambda s: (len(s), s)):
        if d.isdigit() and xs.read(f"{base}/{d}/tag") == tag:
            return int(d)
    raise FrontendError(f"dom{domid} has no 9pfs device with tag {tag!r}")


class SimFrontend(MisbehaviourMixin):
    """One 9pfs device of a simulated guest, from handshake to teardown (and reconnect).

    Collaborators may be passed in (a guest with several devices shares one SimDomainMemory);
    whatever the frontend creates itself it also closes. Other frontends (frontend_minios,
    frontend_unikraft) change the class attributes and hooks below, not the handshake's order.
    """

    INITIALISED_IN_TX = False          # Linux switches to Initialised after the ring transaction
    FOLLOWS_BACKEND_CLOSE = True       # a backend Closing/Closed while connected makes us Closed
    INITWAIT_FAIL_ON: frozenset = frozenset()  # backend states that fail the wait for InitWait
    WHOLE_REPLIES_ONLY = False         # the transport fails on a reply published in pieces

    def __init__(self, sim_dir: str, domid: int, tag: str | None = None, devid: int | None = None, *,
                 memory: SimDomainMemory | None = None, xenstore: XenStore | None = None,
                 misbehave: Misbehave | None = None, timeout: float = 10.0,
                 num_rings: int = LINUX_NUM_RINGS) -> None:
        self.sim_dir = sim_dir
        self.domid = domid
        self.timeout = timeout
        self.misbehave = misbehave or Misbehave()
        self.num_rings = num_rings
        self._own_xs = xenstore is None
        if xenstore is None:
            from xen9p_common.platform.xswire import XsWireClient
            xenstore = XsWireClient(domain_socket(sim_dir, domid), timeout=timeout)
        self.xs = xenstore
        try:
            if devid is None:
                if tag is None:
                    raise ValueError("a frontend needs a tag or a devid")
                devid = find_devid(self.xs, domid, tag)
            self.devid = devid
            self.dir = frontend_dir(domid, devid)
            self.tag = tag if tag is not None else (self.xs.read(f"{self.dir}/tag") or "")
            backend = self.xs.read(f"{self.dir}/backend")
            backend_id = self.xs.read(f"{self.dir}/backend-id")
            if not backend or not backend_id or not backend_id.isdigit():
                raise FrontendError(f"{self.name}: frontend dir {self.dir} has no backend/backend-id")
            self.backend = backend
            self.backend_id = int(backend_id)
        except BaseException:
            if self._own_xs:
                self.xs.close()
            raise
        self._own_mem = memory is None
        self._mem = memory
        self.evtchn: SimEventChannels | None = None
        self.rings: list[GuestRing] = []
        self.transport: RingTransport | None = None
        self.order = 0
        self.leaked_refs: list[int] = []
        self._token = f"fe-{domid}-{devid}"
        self._watching = False
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self.backend_closed = threading.Event()
        self.state = self._read_own_state() or XenbusState.Initialising

    @property
    def name(self) -> str:
        return f"dom{self.domid}/dev{getattr(self, 'devid', '?')}"

    # -- xenstore -------------------------------------------------------------

    def _read_own_state(self) -> XenbusState | None:
        return parse_state(self.xs.read(f"{self.dir}/state"))

    def backend_state(self) -> XenbusState | None:
        return parse_state(self.xs.read(f"{self.backend}/state"))

    def _switch(self, state: XenbusState) -> None:
        self.xs.write(f"{self.dir}/state", str(int(state)))
        self.state = state

    def _watch(self) -> None:
        if not self._watching:
            self.xs.watch(f"{self.backend}/state", self._token)
            self._watching = True

    def wait_backend(self, want: set[XenbusState], timeout: float | None = None,
                     fail_on: set[XenbusState] = frozenset()) -> XenbusState:
        """Wait until the backend state is in `want`; FrontendError on `fail_on` or timeout."""
        self._watch()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            st = self.backend_state()
            if st in want:
                return st
            if st in fail_on:
                raise FrontendError(f"{self.name}: backend went {st.name if st else 'missing'} "
                                    f"while waiting for {sorted(s.name for s in want)}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise FrontendError(f"{self.name}: backend state {st.name if st else 'missing'} "
                                    f"after {self.timeout if timeout is None else timeout} s, wanted "
                                    f"{sorted(s.name for s in want)}")
            self.xs.wait_event(min(left, 1.0))

    # -- handshake ------------------------------------------------------------

    def _read_features(self) -> tuple[int, int]:
        """(number of rings, ring order) this frontend picks from the backend's features."""
        versions = self.xs.read(f"{self.backend}/versions")
        if versions != "1":  # trans_xen.c insists on exactly "1"
            raise FrontendError(f"{self.name}: backend versions {versions!r}, want '1'")
        max_rings = self._feature("max-rings")
        if max_rings < LINUX_NUM_RINGS:
            raise FrontendError(f"{self.name}: backend max-rings {max_rings} < {LINUX_NUM_RINGS}")
        return self.num_rings, min(self._feature("max-ring-page-order"), LINUX_MAX_RING_ORDER)

    def _feature(self, key: str) -> int:
        return _read_uint(self.xs.read(f"{self.backend}/{key}"))

    def _maxsize(self, order: int) -> int:
        """The largest message the transport carries (bounds the msize asked for)."""
        return transport_maxsize(order)

    def _memory(self, rings: int, order: int) -> SimDomainMemory:
        if self._mem is None:
            pages = rings * (1 + (1 << order)) + 8
            self._mem = SimDomainMemory(self.sim_dir, self.domid, pages)
        return self._mem

    def connect(self) -> RingTransport:
        """The whole handshake: InitWait -> rings + grants + ports -> one transaction -> Connected."""
        if self.transport is not None and not self.transport.closed:
            return self.transport
        self.backend_closed.clear()
        if self.state is XenbusState.Closed:
            # A previous guest instance unmounted and closed this device: a new probe starts over
            # from Initialising, which the backend answers with InitWait.
            self._switch(XenbusState.Initialising)
        self.wait_backend({XenbusState.InitWait}, fail_on=self.INITWAIT_FAIL_ON)
        try:
            count, order = self._read_features()
            bad = self.misbehave
            written_order = order if bad.ring_order is None else bad.ring_order
            # Pages exist only up to what one intf page can name; a bigger written order lies.
            order = min(written_order, LINUX_MAX_RING_ORDER) if bad.ring_order is not None else order
            count = count if bad.num_rings is None else bad.num_rings
            real = max(0, min(count, 16))
            mem = self._memory(max(real, 1), order)
            if self.evtchn is None:
                self.evtchn = SimEventChannels(self.sim_dir, self.domid)
            self.order = order
            self.rings = [GuestRing(mem, self.backend_id, order, written_order, self.evtchn) for _ in range(real)]
            self._write_rings(count)
        except BaseException as e:
            log.warning("%s: handshake failed: %s", self.name, e)
            self._release_rings()
            try:
                self._switch(XenbusState.Closing)  # what xenbus_dev_fatal does
            except Xen9pError:
                pass
            raise
        if self.INITIALISED_IN_TX:
            self.state = XenbusState.Initialised
        else:
            self._switch(XenbusState.Initialised)
        st = self.wait_backend({XenbusState.Connected},
                               fail_on={XenbusState.Closing, XenbusState.Closed})
        assert st is XenbusState.Connected
        self._switch(XenbusState.Connected)
        self.transport = self._new_transport()
        if self.FOLLOWS_BACKEND_CLOSE:
            self._start_monitor()
        return self.transport

    def _new_transport(self) -> RingTransport:
        return RingTransport(self.rings, self.evtchn, self._maxsize(self.order),
                             never_consume=self.misbehave.never_consume,
                             send_timeout=max(self.timeout, 30.0), whole_replies_only=self.WHOLE_REPLIES_ONLY)

    def _write_rings(self, count: int) -> None:
        bad = self.misbehave

        def body(tx) -> None:
            tx.write(f"{self.dir}/version", bad.version if bad.version is not None else "1")
            tx.write(f"{self.dir}/num-rings", str(count))
            for i, ring in enumerate(self.rings):
                ref = 0 if bad.ref_zero and i == 0 else ring.intf_ref
                port = 0 if bad.evtchn_zero and i == 0 else ring.port
                tx.write(f"{self.dir}/ring-ref{i}", str(ref))
                tx.write(f"{self.dir}/event-channel-{i}", str(port))
            if self.INITIALISED_IN_TX:
                tx.write(f"{self.dir}/state", str(int(XenbusState.Initialised)))

        self.xs.transaction(body)

    # -- following the backend ------------------------------------------------

    def _start_monitor(self) -> None:
        self._monitor_stop.clear()
        self._monitor = threading.Thread(target=self._follow_backend, daemon=True,
                                         name=f"fe-{self.name}")
        self._monitor.start()

    def _stop_monitor(self) -> None:
        self._monitor_stop.set()
        t, self._monitor = self._monitor, None
        if t is not None and t is not threading.current_thread():
            t.join(self.timeout)

    def _follow_backend(self) -> None:
        """While connected: a backend Closing/Closed makes us Closed, as xenbus_frontend_closed does."""
        while not self._monitor_stop.is_set():
            try:
                self.xs.wait_event(0.2)
                st = self.backend_state()
            except Xen9pError as e:
                log.warning("%s: xenstore lost: %s", self.name, e)
                self._on_backend_closed("xenstore connection lost")
                return
            if st in (XenbusState.Closing, XenbusState.Closed) or st is None:
                try:
                    self._switch(XenbusState.Closed)
                except Xen9pError:
                    pass
                self._on_backend_closed(f"backend {st.name if st else 'gone'}")
                return

    def _on_backend_closed(self, why: str) -> None:
        log.info("%s: %s", self.name, why)
        if self.transport is not None:
            self.transport._fail(why)
        self.backend_closed.set()

    # -- teardown and reconnect -----------------------------------------------

    def disconnect(self) -> None:
        """An orderly close (umount): Closing, wait for the backend, Closed, free the rings."""
        self._stop_monitor()
        if self.transport is not None:
            self.transport.close()
        try:
            if self.state not in (XenbusState.Closed, XenbusState.Initialising):
                self._switch(XenbusState.Closing)
                try:
                    if not self.misbehave.hasty_close:
                        self.wait_backend({XenbusState.Closing, XenbusState.Closed})
                except FrontendError as e:
                    log.warning("%s: %s", self.name, e)
                self._switch(XenbusState.Closed)
                try:
                    self.wait_backend({XenbusState.Closed})
                except FrontendError as e:
                    log.warning("%s: %s", self.name, e)
        finally:
            self._release_rings()

    def reconnect(self) -> RingTransport:
        """After Closed (ours or the backend's): back to Initialising, and a fresh handshake."""
        self._stop_monitor()
        if self.transport is not None:
            self.transport.close()
        if self.state is not XenbusState.Closed:
            self.disconnect()
        self._release_rings()
        self._switch(XenbusState.Initialising)
        return self.connect()

    def _release_rings(self) -> None:
        if self.transport is not None:
            self.transport.close()
        deadline = time.monotonic() + self.timeout
        for ring in self.rings:
            self.leaked_refs += ring.release(self.evtchn, deadline)
        if self.leaked_refs:
            log.warning("%s: %d grant refs still mapped by the backend; leaked", self.name,
                        len(self.leaked_refs))
        self.rings = []

    def close(self) -> None:
        """Disconnect if connected and free everything this frontend created."""
        try:
            if self.state in (XenbusState.Initialised, XenbusState.Connected, XenbusState.Closing):
                self.disconnect()
        except Xen9pError as e:
            log.warning("%s: close: %s", self.name, e)
        self._finish()

    def _finish(self) -> None:
        self._stop_monitor()
        self._release_rings()
        if self.transport is not None:
            self.transport.release()
        if self.evtchn is not None:
            self.evtchn.close()
            self.evtchn = None
        if self._own_xs:
            self.xs.close()
        if self._own_mem and self._mem is not None:
            self._mem.destroy()
            self._mem = None

    def __enter__(self) -> "SimFrontend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_uint(value: str | None) -> int:
    """xenbus_read_unsigned with default 0: anything not a plain decimal reads as 0."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 10:
        return 0
    return int(value)


def mount(frontend: SimFrontend, *, msize: int = LINUX_DEFAULT_MSIZE, aname: str = "",
          uname: str = "root", n_uname: int = 0, timeout: float = 30.0) -> tuple[Client, Fid]:
    """What `mount -t 9p -o trans=xen` does: handshake, Tversion (msize capped), Tattach."""
    transport = frontend.connect()
    client = Client(transport, timeout=timeout, name=f"9p-{frontend.name}")
    try:
        client.version(min(msize, transport.maxsize))
        return client, client.attach(aname, uname, n_uname)
    except BaseException:
        client.close()
        raise

