"""A simulated Xen 9pfs frontend that behaves like Linux net/9p/trans_xen.c, with knobs to misbehave.

It negotiates over the sim xenstore as the guest domain, grants its rings from SimDomainMemory and gives the 9P client a RingTransport.
"""
from __future__ import annotations

import collections
import errno
import logging
import os
import random
import select
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ...client import Client, Fid
from ...client.errors import ConnectionClosed
from ...client.transport import Transport
from ...errors import RingError, Xen9pError, XenStoreError
from ...p9 import messages as m
from ...ring import FrontendRing, Intf, IntfLayout, ring_size
from ...xenbus import XenbusState, parse_state
from .. import XenStore
from . import sim_paths
from .evtchn import SimEventChannels
from .grants import SimDomainMemory

log = logging.getLogger("xen9p.sim.frontend")

# What Linux's trans_xen.c hard-codes.
LINUX_NUM_RINGS = 2
LINUX_MAX_RING_ORDER = 9
LINUX_MAXSIZE = 512 * 1024
LINUX_DEFAULT_MSIZE = 128 * 1024 + 24
FRONTEND_KIND = "9pfs"  # the frontend dir is always device/9pfs, whatever the backend kind

_POLL = 0.05  # seconds between re-checks of a condition that has no wakeup of its own


class FrontendError(Xen9pError):
    """The simulated frontend could not connect (or the backend closed under it)."""


@dataclass
class Misbehave:
    """Ways a hostile or broken guest departs from Linux's handshake (None/False = behave)."""

    version: str | None = None       # written as `version` instead of "1"
    num_rings: int | None = None     # written as `num-rings` (0, 9, ...) instead of 2
    ring_order: int | None = None    # written in each intf page instead of min(backend max, 9)
    ref_zero: bool = False           # ring-ref0 = 0
    evtchn_zero: bool = False        # event-channel-0 = 0
    never_consume: bool = False      # the transport never takes replies off the rings


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


def transport_maxsize(order: int) -> int:
    """trans_xen.c: 512 KiB, or half a ring half when the ring is smaller than that."""
    size = ring_size(order)
    return size // 2 if LINUX_MAXSIZE > size else LINUX_MAXSIZE


class _Ring:
    """One ring of the frontend: its pages, grant refs, event channel and FrontendRing."""

    def __init__(self, mem: SimDomainMemory, backend_id: int, order: int, written_order: int,
                 evtchn: SimEventChannels) -> None:
        self.order = order
        self.frames: list[int] = []
        self.refs: list[int] = []
        self.lock = threading.Lock()  # one request written at a time, as Linux's ring lock
        self.port = 0
        self._mem = mem
        # Data pages first, as one ascending run, so the guest sees one contiguous data area.
        data_frames = sorted(mem.alloc_pages(1 << order))
        self.frames = data_frames + mem.alloc_pages(1)
        self.intf_frame = self.frames[-1]
        self.intf_ref = mem.grant_access(self.intf_frame, backend_id)
        self.refs.append(self.intf_ref)
        data_refs = [mem.grant_access(f, backend_id) for f in data_frames]
        self.refs.extend(data_refs)
        self.intf_view: memoryview | None = mem.page(self.intf_frame)
        Intf(self.intf_view).setup(order, data_refs)
        if written_order != order:
            struct.pack_into("<I", self.intf_view, IntfLayout.RING_ORDER, written_order)
        self.data_view: memoryview | None = _contiguous(mem, data_frames)
        self.fr: FrontendRing | None = FrontendRing(self.intf_view, self.data_view, order)
        self.port = evtchn.alloc_unbound(backend_id)

    def reload(self) -> None:
        """Re-read our indexes from the page after a misbehaviour wrote them behind our back."""
        self.fr = FrontendRing(self.intf_view, self.data_view, self.order)

    def release(self, evtchn: SimEventChannels | None, deadline: float) -> list[int]:
        """Unbind and end every grant; returns the refs a backend still maps (leaked, like Linux)."""
        if evtchn is not None and self.port:
            try:
                evtchn.unbind(self.port)
            except Xen9pError:
                pass
            self.port = 0
        busy = list(self.refs)
        while busy:
            still = []
            for ref in busy:
                try:
                    self._mem.end_access(ref)
                except Xen9pError as e:
                    if getattr(e, "errno", None) != errno.EBUSY:
                        raise
                    still.append(ref)
            busy = still
            if not busy or time.monotonic() >= deadline:
                break
            time.sleep(_POLL)  # nothing signals an unmap; Linux defers with a timer too
        self.refs = busy
        if not busy:
            # Descending, so the free list hands the run out ascending again on reconnect.
            self._mem.free_pages(sorted(self.frames, reverse=True))
            self.frames = []
        self.drop_views()
        return busy

    def drop_views(self) -> None:
        """Let go of guest memory, so the domain's mapping can be closed."""
        self.fr = None
        for v in (self.intf_view, self.data_view):
            if v is not None:
                v.release()
        self.intf_view = self.data_view = None


def _contiguous(mem: SimDomainMemory, frames: list[int]) -> memoryview:
    """One view over the ring's data frames, which must be one run (the guest sees one buffer)."""
    if any(b != a + 1 for a, b in zip(frames, frames[1:])):
        raise FrontendError(f"dom{mem.domid}: ring data pages are not one run of frames")
    return mem.pages_view(frames[0], len(frames))


class RingTransport(Transport):
    """The 9P client's transport over the rings: ring = tag % num_rings, whole requests, whole replies."""

    def __init__(self, rings: list[_Ring], evtchn: SimEventChannels, maxsize: int,
                 *, never_consume: bool = False, send_timeout: float = 30.0) -> None:
        self.rings = rings
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

    def ring_for(self, tag: int) -> _Ring:
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
                    self._progress.wait(_POLL)
            self.requests += 1
            self.evtchn.notify(ring.port)  # Linux notifies after every request

    def _scan(self) -> None:
        for ring in self.rings:
            got = False
            while True:
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


class SimFrontend:
    """One 9pfs device of a simulated guest, from handshake to teardown (and reconnect).

    Collaborators may be passed in (a guest with several devices shares one SimDomainMemory);
    whatever the frontend creates itself it also closes.
    """

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
            from ..xswire import XsWireClient
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
        self.rings: list[_Ring] = []
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
        versions = self.xs.read(f"{self.backend}/versions")
        if versions != "1":  # trans_xen.c insists on exactly "1"
            raise FrontendError(f"{self.name}: backend versions {versions!r}, want '1'")
        max_rings = _read_uint(self.xs.read(f"{self.backend}/max-rings"))
        if max_rings < LINUX_NUM_RINGS:
            raise FrontendError(f"{self.name}: backend max-rings {max_rings} < {LINUX_NUM_RINGS}")
        max_order = _read_uint(self.xs.read(f"{self.backend}/max-ring-page-order"))
        return max_rings, min(max_order, LINUX_MAX_RING_ORDER)

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
        self.wait_backend({XenbusState.InitWait})
        try:
            _, order = self._read_features()
            bad = self.misbehave
            written_order = order if bad.ring_order is None else bad.ring_order
            # Pages exist only up to what one intf page can name; a bigger written order lies.
            order = min(written_order, LINUX_MAX_RING_ORDER) if bad.ring_order is not None else order
            count = self.num_rings if bad.num_rings is None else bad.num_rings
            real = max(0, min(count, 16))
            mem = self._memory(max(real, 1), order)
            if self.evtchn is None:
                self.evtchn = SimEventChannels(self.sim_dir, self.domid)
            self.order = order
            self.rings = [_Ring(mem, self.backend_id, order, written_order, self.evtchn) for _ in range(real)]
            self._write_rings(count)
        except BaseException as e:
            log.warning("%s: handshake failed: %s", self.name, e)
            self._release_rings()
            try:
                self._switch(XenbusState.Closing)  # what xenbus_dev_fatal does
            except Xen9pError:
                pass
            raise
        self._switch(XenbusState.Initialised)
        st = self.wait_backend({XenbusState.Connected},
                               fail_on={XenbusState.Closing, XenbusState.Closed})
        assert st is XenbusState.Connected
        self._switch(XenbusState.Connected)
        self.transport = RingTransport(self.rings, self.evtchn, transport_maxsize(order),
                                       never_consume=self.misbehave.never_consume,
                                       send_timeout=max(self.timeout, 30.0))
        self._start_monitor()
        return self.transport

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

    # -- misbehaviour on a connected ring (tests) ------------------------------

    def _ring(self, index: int) -> _Ring:
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
