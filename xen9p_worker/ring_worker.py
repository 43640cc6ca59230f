"""The ring worker: one Xen 9pfs ring served by one process, many requests in flight, resumable after a crash.

Maps the ring, binds its event channel, and loops on the event channel, a wake pipe, a kick socket and zmq.

Crash-resumption protocol (the journal is per ring, in the device state, see shared/journal.py):

1. out_cons advances only up to the oldest request whose reply is not yet published (or
   that was flushed unanswered). Everything between out_cons and out_prod therefore is
   either untaken, or taken and recorded in the journal; a successor starts at out_cons.
2. A request is journalled STARTED (ring index, size, tag, type) before it is served.
3. When served, a small reply (<= 480 bytes: every reply of a non-idempotent operation)
   is stored and the record goes DONE; a successor resends it, never re-runs the operation.
4. Before the reply's bytes become visible the record goes REPLYING with the in-ring
   position and length of the reply; then in_prod is published, then PUBLISHED.
   A successor compares with the page's in_prod: end of reply <= in_prod (u32 order)
   means the guest has it, so it is never sent twice.
5. A successor walks the ring from out_cons: a request with a journal record at its index
   (same tag and size) is resolved from the record (skip if published, resend the stored
   reply, else re-run it: STARTED work is either idempotent or not yet applied, except in
   the microseconds between a host call returning and step 3 — a re-run of such a
   non-idempotent call answers with the error the host gives, e.g. EEXIST; an O_APPEND
   Twrite notes the file's size in its record before appending, and its re-run looks for
   its data past that size instead of appending twice).
Records behind out_cons are dead and freed. Data replies (Rread, Rreaddir) are never
stored: they are recomputed, which is harmless for reads.

Threads: the loop thread takes requests (only it touches out_cons and the read cursor)
and runs inline ops; I/O threads of the dispatcher reply from their own threads. Replies
are written under one reply lock, in the order reserved; a Tread holds the lock from
alloc() to its reply so preadv fills ring memory directly and nothing is published past
an unfinished reservation. The loop thread never waits for that lock or for ring room:
its alloc() raises BlockingIOError (the Tread goes to the pool), its other replies are
deferred, and a Tread whose reply does not fit the in-ring yet is held until the guest
has consumed enough (a page-cached Tread is then served on the loop: preadv RWF_NOWAIT).
Notifications are batched: one per loop pass and one per NOTIFY_BATCH requests of a long
drain, and a big reply published by an I/O thread notifies at once (the guest has nothing
else to do until it has it).
"""
from __future__ import annotations

import collections
import errno
import gc
import logging
import os
import select
import socket
import struct
import threading
import time
from typing import Any, Callable

from xen9p_common import buildinfo, control
from xen9p_common.errors import RingError, Xen9pError
from xen9p_common.exitcodes import EXIT_ERROR, EXIT_OK, EXIT_RING
from xen9p_common.p9 import messages as M
from xen9p_common.procs import pid_alive
from xen9p_common.ring import BackendRing, Intf, IntfLayout, NoRoom

from .shared.device_state import DeviceState
from .metrics import RingMetrics
from .ring_resume import ResumeFixup
from .shared import journal as J
from .watchdog import type_name, where_waits

# The message classes are made at import time from their field lists, so a type checker sees
# neither their constructors' fields nor their attributes: these two are used untyped. (mypyc,
# which compiles this module in the default build, refuses code that does not type-check.)
_Rflush: Any = M.Rflush
_decode: Any = M.decode

log = logging.getLogger("xen9p.ring")

_HDR = struct.Struct("<IBH")
_M32 = 0xFFFFFFFF
T_FLUSH = M.Tflush.TYPE
T_WRITE = M.Twrite.TYPE
T_READ = M.Tread.TYPE
_TREAD_COUNT = struct.Struct("<I")  # count at offset 19 of a Tread (size type tag fid offset count)
_RREAD_HDR = 11
BIG_REPLY = 64 * 1024  # an I/O thread that publishes a reply this big notifies the guest at once
NOTIFY_BATCH = 4  # a long drain notifies after this many requests, so the guest overlaps with us
_TWRITE_HDR = 23  # size type tag fid[4] offset[8] count[4]
R_ERRORS = (M.Rlerror.TYPE, M.Rerror.TYPE)


class _Abandon(Xen9pError):
    """A reply given up at shutdown (no room before the deadline); the journal keeps it."""


class WorkerExit(Xen9pError):
    """The worker must stop; `code` is its exit status."""

    def __init__(self, code: int, msg: str) -> None:
        self.code = code
        super().__init__(msg)


def kick_address(state_name: str, ring: int) -> bytes:
    """Abstract datagram socket through which other rings' workers wake this one (Tflush)."""
    return f"\0xen9p-kick-{state_name}-{ring}".encode()


class _Pending:
    """One request taken off the ring, until its reply is published (or it is dropped)."""

    __slots__ = ("w", "index", "size", "slot", "tag", "mtype", "t0", "finished", "flushers",
                 "segs", "held", "frame")

    def __init__(self, w: "RingWorker", index: int, size: int, slot: int, tag: int, mtype: int) -> None:
        self.w = w
        self.index = index
        self.size = size
        self.slot = slot
        self.tag = tag
        self.mtype = mtype
        self.t0 = time.monotonic_ns()
        self.finished = False
        self.flushers: Any = []
        self.segs: Any = None
        self.held = False
        self.frame: Any = None

    # The dispatcher's two callbacks -------------------------------------------

    def alloc(self, n: int) -> list:
        return self.w._alloc(self, n)

    def reply(self, result) -> None:
        self.w._reply(self, result)

    def note(self, value: int) -> None:
        self.w._note(self, value)


class _ResumedPending(_Pending):
    """A re-run request: its reply passes through ResumeFixup.translate."""

    __slots__ = ("fix", "req")
    fix: Any
    req: Any

    def reply(self, result) -> None:
        if not isinstance(result, int):
            result = self.fix.translate(self.req, result)
        self.w._reply(self, result)


class RingWorker:
    """Serves one ring of one device until stopped, a fatal ring error, or SIGTERM.

    Collaborators are passed in: `grants`/`evtchn` (platform), `device` (DeviceState),
    `session` (dispatch.Session over the device's shared fids/locks/state), `control_sock`
    (a zmq DEALER or None), `clock` for heartbeats.
    """

    def __init__(self, *, domid: int, devid: int, ring: int, ring_ref: int, evtchn_port: int,
                 grants, evtchn, device: DeviceState, session, control_sock=None,
                 max_ring_order: int = IntfLayout.MAX_RING_ORDER, heartbeat: float = 1.0,
                 stats_every: float = 2.0, drain_timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 fault: Any = None, spin_us: float = 30.0) -> None:
        self.domid, self.devid, self.ring_no = domid, devid, ring
        self.ring_ref, self.remote_port = ring_ref, evtchn_port
        self.name = control.ring_name(domid, devid, ring)
        self.grants = grants
        self.evtchn = evtchn
        self.ds = device
        self.session = session
        self.ctl = control_sock
        self.max_ring_order = max_ring_order
        self.heartbeat = heartbeat
        self.stats_every = stats_every
        self.drain_timeout = drain_timeout
        self.clock = clock
        self.metrics = RingMetrics()
        self.journal = device.journal(ring)
        self.port = 0
        # Set by setup() and used only after it: Any rather than Optional, so the compiled build
        # (mypyc checks every attribute access against its type) needs no check per use.
        self.ring: Any = None
        self._intf_map: Any = None
        self._data_map: Any = None
        self._reply_lock = threading.Lock()
        self._room_cv = threading.Condition()
        self._flush_mu = threading.Condition()
        self._deferred: list[tuple[_Pending, bytes]] = []  # loop-thread replies waiting for room
        self._held: collections.deque = collections.deque()  # (p, frame, reply size): Treads waiting for room
        self._stop_deadline = float("inf")
        self._flushes: list[list] = []
        self._flush_thread: threading.Thread | None = None
        self._room_waiters = 0
        self._journal_full_logged = False
        self._tag_mu = threading.Lock()
        self._order: collections.deque[_Pending] = collections.deque()
        self._by_tag: dict[int, _Pending] = {}
        self._resume: dict[int, J.Record] = {}
        self._resume_in_prod = 0
        self._need_notify = False
        self._wake_pending = False
        self._ctl_dirty = False  # a control send since the last look at ZMQ_EVENTS
        self._wake_r = self._wake_w = -1
        self._kick: Any = None
        self._stopping = False
        self._stop_reason = ""
        self._fatal: str | None = None
        self._session_epoch = -1
        self._fid_epoch = -1
        self._msize_cap = device.msize_cap or M.MSIZE_CAP
        # The dispatcher takes a wrapped request as a list of two views (Twrite zero-copy)
        # when it says so; otherwise wrapped requests are copied.
        self._segments_ok = bool(getattr(session, "accepts_segments", False))
        # A Tversion that starts a new session (on this ring) drops the device's locks too.
        session.on_new_session = self._version_reset
        self._on_loop = threading.get_ident()
        # Fault injection for crash-resumption tests: die by SIGKILL at the n-th reply that
        # reaches `point` (applied | done | replying | published), or at the n-th journal note
        # (noted: just before a non-idempotent host call). None in production.
        self._fault = fault
        self._fault_count = 0
        self._pass_at = clock()  # when the loop last passed (the watchdog reads it)
        # While replies wait for the guest to make room, look at the ring for this long before
        # sleeping: the guest usually consumes within microseconds, a wakeup costs more.
        self.spin = spin_us / 1e6
        self._bulk = False  # a big reply went out since the last spin: data traffic, worth polling for

    def _crash(self, point: str) -> None:
        if self._fault[0] == point:
            self._fault_count += 1
            if self._fault_count == self._fault[1]:
                os.kill(os.getpid(), 9)

    # -- setup ---------------------------------------------------------------------

    def setup(self) -> None:
        """Claim the ring, map intf + data pages, bind the event channel, adopt the journal."""
        if not self.ds.claim_ring(self.ring_no):
            raise WorkerExit(EXIT_ERROR, f"{self.name}: another live worker holds this ring")
        if not 0 < self.ring_ref <= _M32 or not 0 < self.remote_port <= _M32:
            raise WorkerExit(EXIT_RING, f"{self.name}: ring-ref and event channel must be nonzero")
        self._intf_map = self.grants.map(self.domid, [self.ring_ref])
        intf_buf = self._intf_map.buf[:IntfLayout.PAGE_SIZE]
        try:
            order, refs = Intf(intf_buf).read_refs(self.max_ring_order)  # copied once
        except RingError as e:
            raise WorkerExit(EXIT_RING, f"{self.name}: {e}") from None
        if any(r == 0 for r in refs):
            raise WorkerExit(EXIT_RING, f"{self.name}: ring data ref 0")
        self._data_map = self.grants.map(self.domid, list(refs))
        self.ring = BackendRing(intf_buf, self._data_map.buf, order, self._limit())
        self.order = order
        self.port = self.evtchn.bind_interdomain(self.domid, self.remote_port)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._kick = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self._kick.bind(kick_address(self.ds.name, self.ring_no))
        self._adopt()
        self.journal.set_pid(os.getpid())

    def _limit(self) -> int:
        return self.ds.session.msize or self._msize_cap

    def _adopt(self) -> None:
        """Read what a predecessor left in the journal (crash resumption, step 5)."""
        ring = self.ring
        pred = self.journal.pid()
        if pred and pred != os.getpid() and not pid_alive(pred):
            self._orphaned_fids(pred)
        recs = self.journal.adopt()
        self._resume_in_prod = ring.in_prod
        for r in recs:
            if (r.req_index - ring.out_cons) & _M32 >= ring.size:
                self.journal.release(r.slot)  # behind out_cons: already resolved
            else:
                self._resume[r.req_index] = r
        if self._resume:
            log.info("%s: resuming with %d requests in flight", self.name, len(self._resume))

    def _orphaned_fids(self, pred: int) -> None:
        """Open fids whose holder fd died with the predecessor: reopen them by path, hold them here."""
        from .backend.hostops import reopen
        from .fdcache import ROLE_OPEN
        from .fids import FID_DIR, FID_FILE

        fids = self.ds.fids
        n = 0
        for fid in fids.snapshot():
            try:
                e = fids.get(fid)
            except OSError:
                continue
            if e.holder_pid != pred:
                continue
            fd = -1
            if e.kind in (FID_FILE, FID_DIR):
                try:
                    pfd = self.session.backend.walk(e.path)
                    try:
                        fd = reopen(pfd, e.open_flags & ~(os.O_TRUNC | os.O_CREAT | os.O_EXCL))
                    finally:
                        os.close(pfd)
                except OSError:
                    fd = -1  # unlinked while open: it died with its holder
            try:
                fids.update(fid, e.copy(holder_pid=os.getpid() if fd >= 0 else 0, holder_fd=fd))
            except OSError:
                if fd >= 0:
                    os.close(fd)
                continue
            if fd >= 0:
                self.session.fds.put((fid, e.generation, ROLE_OPEN), fd)
            n += 1
        if n:
            log.info("%s: took over %d open fids from dead pid %d", self.name, n, pred)

    # -- the loop ------------------------------------------------------------------

    def run(self) -> int:
        # A plain poll(2) on plain fds; the control socket through its zmq FD, which signals
        # "look at ZMQ_EVENTS" rather than "readable" (zmq.Poller cost ~10 us a pass in Python).
        poller = select.poll()
        evt_fd = self.evtchn.fileno()
        kick_fd = self._kick.fileno()
        for fd in (evt_fd, self._wake_r, kick_fd):
            poller.register(fd, select.POLLIN)
        ctl_fd = -1
        if self.ctl is not None:
            import zmq
            ctl_fd = self.ctl.getsockopt(zmq.FD)
            poller.register(ctl_fd, select.POLLIN)
        self.send(control.W_READY, build=buildinfo.build())
        now = self.clock()
        next_hb = now + self.heartbeat
        next_stats = now + self.stats_every
        drain_deadline = None
        code = EXIT_OK
        self._on_loop = threading.get_ident()
        evt = self.evtchn
        try:
            while True:
                self._pass()
                if self._fatal is not None:
                    raise RingError(msg=self._fatal)
                if self._stopping:
                    if drain_deadline is None:
                        drain_deadline = self.clock() + self.drain_timeout
                    if not self._order or self.clock() >= drain_deadline:
                        break
                now = self.clock()
                self._pass_at = now
                if now >= next_hb:
                    self.send(control.W_HEARTBEAT, ts=time.time())
                    next_hb = now + self.heartbeat
                if now >= next_stats:
                    self._publish_stats()
                    next_stats = now + self.stats_every
                # Never longer than one heartbeat, whatever the clock did (under a nested Xen dom0
                # time.monotonic() was seen to step 141 s back: deadlines then lie in the far future).
                timeout = min(max(0.0, min(next_hb, next_stats) - self.clock()), self.heartbeat)
                if next_hb - now > self.heartbeat or next_stats - now > self.stats_every:
                    next_hb, next_stats = now + self.heartbeat, now + self.stats_every
                if self._stopping:
                    timeout = min(timeout, 0.01)
                elif self.spin and (self._bulk or self._held or self._deferred or self._room_waiters) \
                        and self._spin():
                    continue
                if self._ctl_dirty:
                    # A send may have taken the FD's edge of a message that arrived meanwhile.
                    self._ctl_dirty = False
                    if self._ctl_readable():
                        self._control()
                events = dict(poller.poll(int(timeout * 1000) + 1))
                if ctl_fd in events and self._ctl_readable():
                    self._control()
                if events.get(evt_fd):
                    for p in evt.pending():
                        evt.unmask(p)  # unmask first, then re-scan (the _pass at the loop top)
                    if self._room_waiters:
                        with self._room_cv:
                            self._room_cv.notify_all()
                if events.get(kick_fd):
                    try:
                        while self._kick.recv(16):
                            pass
                    except BlockingIOError:
                        pass
        except RingError as e:
            log.error("%s: ring protocol violation: %s", self.name, e)
            self.send(control.W_ERROR, reason=f"ring protocol violation: {e}", fatal=True)
            code = EXIT_RING
        self._publish_stats()
        self.send(control.W_BYE, reason=self._stop_reason or ("ring error" if code else "done"))
        return code

    def _spin(self) -> bool:
        """Data traffic (a big reply went out) or replies waiting for room in the in-ring (a big
        Tread held, an I/O thread in _room): poll the ring for up to `spin` seconds (no syscall
        but a GIL-releasing yield) instead of a sleep and a wakeup per reply. True when there is
        work again: room, a request or a completion. (Measured with bench/ring_probe.py: 512 KiB
        Tread per ring 2.1-2.5 -> 4-5 GB/s; spinning after every busy pass also cost small ops
        10-20 %, so they do not spin.)"""
        self._bulk = False
        ring = self.ring
        end = time.perf_counter() + self.spin
        yield_ = os.sched_yield
        in_cons = ring.page_in_cons()
        while True:
            if ring.page_in_cons() != in_cons:
                if self._room_waiters:
                    with self._room_cv:
                        self._room_cv.notify_all()
                return True
            if ring.page_out_prod() != ring.read_cursor or self._wake_pending:
                return True
            if time.perf_counter() >= end:
                return False
            yield_()

    def stop(self, reason: str = "stop") -> None:
        """Stop taking requests, answer those in flight, exit (safe from a signal handler)."""
        self._stopping = True
        self._stop_reason = reason
        self._stop_deadline = self.clock() + self.drain_timeout
        self._wake()

    def _pass(self) -> None:
        """One loop pass: session changes, cancels, drain, advance out_cons, one notify."""
        if self._wake_pending:
            # Empty the pipe first, then clear the flag: a completion that saw the flag still
            # set is already marked finished, so this pass's _advance sees it.
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            self._wake_pending = False
        self._refresh_session()
        j = self.journal
        if j.cancels_waiting():
            with self.ds.mutex:
                tags = j.take_cancels()
            for tag in tags:
                self._cancel_local(tag)
        if self._deferred:
            self._retry_deferred()
        if self._held:
            self._retry_held()
        kick = j.kick_requested()
        if not self._stopping:
            self._drain()
        if kick != j.kick_acked():
            j.ack_kick(kick)
        self._advance()
        self._notify()

    def _notify(self) -> None:
        if self._need_notify:
            self._need_notify = False
            self.metrics.notified()
            self.evtchn.notify(self.port)

    def _refresh_session(self) -> None:
        ds = self.ds
        ep = ds.session.epoch
        if ep != self._session_epoch:
            # Tversion on some ring: new msize for our size check; the old session's locks went.
            self._session_epoch = ep
            self.ring.max_msize = self._limit()
            self.session.lock_keys.clear()
        fe = ds.fids.epoch()
        if fe != self._fid_epoch:
            self._fid_epoch = fe
            self.session.drop_stale_fds()

    def _drain(self) -> None:
        ring = self.ring
        j = self.journal
        take = ring.take_request
        batch = NOTIFY_BATCH
        while True:
            if not j.free_slots():
                self._advance()  # a long drain: let out_cons pass what it answered meanwhile
            if not j.free_slots():
                # Every journal slot holds a request out_cons has not passed: taking more is
                # unsafe for crash resumption. Say so once: a guest waiting here looks hung.
                if not self._journal_full_logged and ring.peek_request() is not None:
                    self._journal_full_logged = True
                    oldest = self._order[0] if self._order else None
                    log.warning("%s: journal full (%d requests in flight behind out_cons %#x); "
                                "waiting for the oldest to be answered%s", self.name, len(self._order),
                                ring.out_cons, f" (tag {oldest.tag} {type_name(oldest.mtype)}: "
                                f"{where_waits(self, oldest)})" if oldest is not None else "")
                break
            self._journal_full_logged = False
            r = take()
            if r is None:
                break
            batch -= 1
            if not batch:
                # Replies published so far go to the guest now: on another core it consumes
                # them (and sends more) while we serve the rest of the drain.
                batch = NOTIFY_BATCH
                self._advance()  # room for more requests too, not only the replies
                self._notify()
            index, size = r
            segs = ring.request_segments(index, size)
            if len(segs) == 1:
                frame = segs[0]
                _, mtype, tag = _HDR.unpack_from(frame, 0)
            else:
                # Over the ring's end (once per lap): a session that takes segments gets both
                # views (a Twrite is then written with pwritev straight from the ring), else a copy.
                head = bytes(segs[0][:7]) + bytes(segs[1][:max(0, 7 - len(segs[0]))])
                _, mtype, tag = _HDR.unpack_from(head, 0)
                if not (self._segments_ok and mtype == T_WRITE and len(segs[0]) >= _TWRITE_HDR):
                    frame = bytes(segs[0]) + bytes(segs[1])
                else:
                    frame = segs
            self.metrics.request(size)
            rec = self._resume.pop(index, None) if self._resume else None
            if rec is not None:
                if rec.tag == tag and rec.req_size == size and rec.mtype == mtype:
                    self._resume_one(rec, index, size, tag, mtype, frame)
                    continue
                j.release(rec.slot)
            slot = j.start(index, size, tag, mtype)
            self._serve(_Pending(self, index, size, slot, tag, mtype), frame)
        j.bump_scans()

    def _serve(self, p: _Pending, frame) -> None:
        self._order.append(p)
        with self._tag_mu:
            self._by_tag[p.tag] = p
        if p.mtype == T_FLUSH:
            self._flush(p, frame)
            return
        p.frame = frame
        if p.mtype == T_READ and p.size >= 23 and not isinstance(frame, list):
            # The reply is reserved whole before the read: if it cannot fit the in-ring now,
            # hold the Tread until the guest consumes instead of parking a thread on the room.
            need = _RREAD_HDR + min(_TREAD_COUNT.unpack_from(frame, 19)[0], self._limit() - _RREAD_HDR)
            if need <= self.ring.size and (self._held or need > self._free_room()):
                self._held.append((p, frame, need))
                return
        self.session.submit(frame, p.reply, p.alloc, p.note)

    def _free_room(self) -> int:
        try:
            return self.ring.reply_space()
        except RingError as e:
            self._fatal = str(e)
            return 0

    def _unhold(self, p: _Pending) -> bool:
        """Withdraw p if it is a held Tread (loop thread): it never started, so it is never answered."""
        for i, h in enumerate(self._held):
            if h[0] is p:
                del self._held[i]
                return True
        return False

    def _retry_held(self) -> None:
        """Submit held Treads, oldest first, while their replies fit (Tflush may have settled some)."""
        held = self._held
        while held:
            p, frame, need = held[0]
            if p.finished:
                held.popleft()
                continue
            if need > self._free_room():
                return
            held.popleft()
            self.session.submit(frame, p.reply, p.alloc, p.note)

    def _resume_one(self, rec: J.Record, index: int, size: int, tag: int, mtype: int, frame) -> None:
        self.metrics.resumed += 1
        p = _Pending(self, index, size, rec.slot, tag, mtype)
        if rec.published_by(self._resume_in_prod):
            # The guest has this reply already: never send it twice.
            self.journal.published(rec.slot)
            self._order.append(p)
            self.metrics.dropped()
            self._settle(p, replied=True)
            return
        if rec.stored and rec.state in (J.DONE, J.REPLYING):
            self._order.append(p)
            with self._tag_mu:
                self._by_tag[tag] = p
            self._reply(p, rec.stored)  # resend, do not re-run
            return
        # Started by the predecessor, maybe applied: re-run so it counts once (ring_resume).
        self.journal.restart(rec.slot)
        fix = ResumeFixup(self.session)
        out = fix.prepare(frame, rec.note)
        if out is not frame and out[4] & 1:
            self._order.append(p)
            with self._tag_mu:
                self._by_tag[tag] = p
            self._reply(p, out)
            return
        p = _ResumedPending(self, index, size, rec.slot, tag, mtype)
        p.fix, p.req = fix, out
        self._serve(p, out)

    def _retry_deferred(self) -> None:
        pending, self._deferred = self._deferred, []
        for i, (p, data) in enumerate(pending):
            self._reply(p, data, retry=True)
            if self._deferred:  # still no room: keep the rest, in order, behind it
                self._deferred.extend(pending[i + 1:])
                return

    def _advance(self) -> None:
        """Move out_cons past the finished prefix, then free those journal records."""
        order = self._order
        if not order or not order[0].finished:
            return
        done = []
        while order and order[0].finished:
            done.append(order.popleft())
        last = done[-1]
        self.ring.consume_to((last.index + last.size) & _M32)
        for p in done:
            self.journal.release(p.slot)
        self._need_notify = True  # the guest may be waiting for room for requests
        if self._resume:
            oc = self.ring.out_cons
            for idx in [i for i in self._resume if (i - oc) & _M32 >= self.ring.size]:
                self.journal.release(self._resume.pop(idx).slot)

    # -- replies (any thread) ------------------------------------------------------

    def _room(self, n: int) -> list:
        """Segments for an n-byte reply at the reserve cursor, waiting for the guest to consume.

        On the loop thread it never waits (raises NoRoom: the reply is deferred), so
        heartbeats and the event channel keep being served while a guest does not consume.
        """
        ring = self.ring
        on_loop = threading.get_ident() == self._on_loop
        while True:
            try:
                return ring.reply_segments(n)
            except NoRoom:
                if self._fatal is not None:
                    raise RingError(msg=self._fatal)
                if on_loop:
                    raise
                if self._stopping and self.clock() >= self._stop_deadline:
                    raise _Abandon("stopping with no room for a reply: left to a successor")
                with self._room_cv:
                    self._room_waiters += 1
                    try:
                        # The loop wakes us on every event (the guest notifies after consuming).
                        self._room_cv.wait(0.05)
                    finally:
                        self._room_waiters -= 1

    def _alloc(self, p: _Pending, n: int) -> list:
        if n > self.ring.size:
            raise OSError(errno.EMSGSIZE, f"reply of {n} bytes exceeds the ring")
        if threading.get_ident() == self._on_loop:
            # The loop never waits (for the lock or for room): the caller goes to its pool.
            if not self._reply_lock.acquire(blocking=False):
                raise BlockingIOError(errno.EAGAIN, "reply lock busy")
            try:
                p.segs = self.ring.reply_segments(n)
            except NoRoom:
                self._reply_lock.release()
                raise BlockingIOError(errno.EAGAIN, "no room in the in-ring yet") from None
            except BaseException:
                self._reply_lock.release()
                raise
            p.held = True
            return p.segs
        self._reply_lock.acquire()
        try:
            p.segs = self._room(n)
        except BaseException:
            self._reply_lock.release()
            raise
        p.held = True
        return p.segs

    def _note(self, p: _Pending, value: int) -> None:
        """A handler's fact for a successor, before its non-idempotent host call (crash resumption)."""
        self.journal.note(p.slot, value)
        if self._fault is not None:
            self._crash("noted")

    def _reply(self, p: _Pending, result, retry: bool = False) -> None:
        ring = self.ring
        j = self.journal
        fault = self._fault
        if fault is not None and not retry:
            self._crash("applied")
        on_loop = threading.get_ident() == self._on_loop
        try:
            if isinstance(result, int):
                n = result  # written in place by a Tread, reply lock held since _alloc
                mtype = M.Rread.TYPE
            else:
                data = result
                n = len(data)
                if n > ring.size:
                    data = self.session.error_frame(p.tag, errno.EMSGSIZE)
                    n = len(data)
                mtype = data[4]
                if not p.held:
                    if self._deferred and on_loop and not retry:
                        self._deferred.append((p, data))  # keep the loop's replies in order
                        return
                    j.done(p.slot, data)  # stored when small: resent after a crash, not re-run
                    if fault is not None:
                        self._crash("done")
                    if on_loop:
                        # An I/O thread holds the lock (maybe waiting for room): retry next pass;
                        # its reply wakes the loop.
                        if not self._reply_lock.acquire(blocking=False):
                            self._deferred.append((p, data))
                            return
                        p.held = True
                        p.segs = ring.reply_segments(n)  # NoRoom: deferred (below)
                    else:
                        self._reply_lock.acquire()
                        p.held = True
                        p.segs = self._room(n)
                segs = p.segs
                if len(segs) == 1 and len(segs[0]) == n:
                    segs[0][:] = data
                else:  # over the ring's end, or an error in place of a Tread's allocation
                    _scatter(segs, data)
            j.replying(p.slot, ring.reserved, n)
            if fault is not None:
                self._crash("replying")
            ring.publish_reply(n)
            if fault is not None:
                self._crash("published")
        except RingError as e:
            self._fatal = str(e)
            self._wake()
            return
        except NoRoom:
            # Loop thread, guest not consuming: retried in order at the next passes.
            self._deferred.append((p, data))
            return
        except _Abandon:
            return
        finally:
            if p.held:
                p.held = False
                p.segs = None
                self._reply_lock.release()
        j.published(p.slot)
        self.metrics.reply(p.mtype, n, mtype in R_ERRORS, time.monotonic_ns() - p.t0)
        if n >= BIG_REPLY:
            self._bulk = True
            if not on_loop:
                self.metrics.notified()
                self.evtchn.notify(self.port)
        self._settle(p, True, on_loop)

    def _settle(self, p: _Pending, replied: bool, on_loop: bool | None = None) -> None:
        """p needs nothing more: let out_cons pass it, answer Tflushes that waited for it."""
        p.frame = None
        with self._tag_mu:
            p.finished = True
            flushers, p.flushers = p.flushers, None
            if self._by_tag.get(p.tag) is p:
                del self._by_tag[p.tag]
        if not replied:
            self.journal.published(p.slot)  # resolved without an answer: nothing to resend
            self.metrics.dropped()
        for f in flushers or ():
            self._reply(f, M.encode(_Rflush(f.tag)))
        self._need_notify = True
        if not (on_loop if on_loop is not None else threading.get_ident() == self._on_loop):
            self._wake()

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"w")
            except (BlockingIOError, OSError):
                pass

    def _version_reset(self) -> None:
        """Tversion reset the session of every ring (dispatch moved the epoch): drop the device's locks."""
        self.ds.locks.release_all()

    # -- Tflush --------------------------------------------------------------------

    def _flush(self, p: _Pending, frame) -> None:
        self.metrics.flushes += 1
        try:
            oldtag = _decode(frame).oldtag
        except Xen9pError:
            self._reply(p, self.session.error_frame(p.tag, errno.EPROTO))
            return
        with self._tag_mu:
            old = self._by_tag.get(oldtag)
            if old is not None and old is not p and not old.finished:
                if old.mtype != T_FLUSH and (self._unhold(old) or self.session.cancel(oldtag)):
                    old_dropped = old
                else:
                    old.flushers.append(p)  # Rflush goes right after old's reply
                    return
            else:
                old_dropped = None
        if old_dropped is not None:
            self._settle(old_dropped, replied=False)
            self._reply(p, M.encode(_Rflush(p.tag)))
            return
        if self.ds.num_rings == 1:
            self._reply(p, M.encode(_Rflush(p.tag)))
            return
        self._remote_flush(p, oldtag)

    def _cancel_local(self, tag: int) -> None:
        """Another ring's Tflush asks us to withdraw tag if it waits (a blocked Tlock)."""
        with self._tag_mu:
            old = self._by_tag.get(tag)
            if (old is None or old.finished or old.mtype == T_FLUSH
                    or not (self._unhold(old) or self.session.cancel(tag))):
                return
        self._settle(old, replied=False)

    def _remote_flush(self, p: _Pending, oldtag: int) -> None:
        """Ask the other rings to settle oldtag; the flush waiter answers once none holds it."""
        ds = self.ds
        targets = []
        with ds.mutex:
            for r in range(ds.num_rings):
                if r != self.ring_no:
                    j = ds.journal(r)
                    targets.append((j, j.request_kick()))
                    j.post_cancel(oldtag)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            for j, _ in targets:
                try:
                    sock.sendto(b"k", socket.MSG_DONTWAIT, kick_address(ds.name, j.ring))
                except OSError:
                    pass  # no live worker there; its successor resolves its journal
        finally:
            sock.close()
        # A drain pass that started after our kick has taken oldtag if it was queued (2 s
        # at most: a ring without a live worker never acks).
        with self._flush_mu:
            self._flushes.append([p, oldtag, targets, time.monotonic() + 2.0])
            if self._flush_thread is None:
                self._flush_thread = threading.Thread(target=self._flush_waiter, daemon=True,
                                                      name="remote-flush")
                self._flush_thread.start()
            self._flush_mu.notify()

    def _flush_waiter(self, poll: float = 0.001) -> None:
        """One thread for every Tflush that waits on other rings (a Tflush flood costs no threads)."""
        while True:
            with self._flush_mu:
                while not self._flushes:
                    self._flush_mu.wait()
                pending = list(self._flushes)
            ready = []
            now = time.monotonic()
            for item in pending:
                p, oldtag, targets, deadline = item
                if now < deadline and not all(j.kick_acked() >= want for j, want in targets):
                    continue
                if any(j.tag_pending(oldtag) for j, _ in targets):
                    continue
                ready.append(item)
            if ready:
                with self._flush_mu:
                    for item in ready:
                        self._flushes.remove(item)
                for p, *_ in ready:
                    self._reply(p, M.encode(_Rflush(p.tag)))
            else:
                time.sleep(poll)  # other processes' journals have no wakeup to wait on

    # -- control -------------------------------------------------------------------

    def send(self, mtype: str, **fields) -> None:
        """One message to xen9pd (never blocks: dropped while none listens)."""
        if self.ctl is None:
            return
        import zmq
        try:
            self.ctl.send(control.dumps(control.worker_msg(mtype, pid=os.getpid(), ring=self.name,
                                                           **fields)), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the supervisor is away; heartbeats resume when it is back
        self._ctl_dirty = True

    def _ctl_readable(self) -> bool:
        import zmq
        try:
            return bool(self.ctl.getsockopt(zmq.EVENTS) & zmq.POLLIN)
        except zmq.ZMQError:
            return False

    def hello(self) -> None:
        self.send(control.W_HELLO)

    def _publish_stats(self) -> None:
        self.ds.store_ring_counters(self.ring_no, self.metrics.counters())
        self.send(control.W_STATS, metrics=self.metrics.snapshot())

    def _control(self) -> None:
        import zmq
        while True:
            try:
                raw = self.ctl.recv(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            try:
                msg = control.loads(raw)
            except control.ControlError as e:
                log.warning("%s: bad control message: %s", self.name, e)
                continue
            t = msg.get("type") or msg.get("cmd")
            if t == control.S_STOP:
                self.stop("supervisor asked")
            elif t == control.S_LOG_LEVEL:
                level = str(msg.get("level") or msg.get("args", {}).get("level", "")).upper()
                if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
                    logging.getLogger().setLevel(level)

    # -- teardown ------------------------------------------------------------------

    def close(self) -> None:
        if self.port:
            try:
                self.evtchn.unbind(self.port)
            except Xen9pError:
                pass
            self.port = 0
        ring, self.ring = self.ring, None
        self._order.clear()
        self._by_tag.clear()
        if ring is not None:
            # Our slices of the mappings must go first, or the mapping cannot be torn down.
            ring.release()
            del ring
        gc.collect()
        for m in (self._data_map, self._intf_map):
            if m is not None:
                try:
                    m.unmap()
                except Xen9pError as e:
                    log.warning("%s: unmap: %s", self.name, e)
        self._data_map = self._intf_map = None
        if self._kick is not None:
            self._kick.close()
            self._kick = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1


def _scatter(segs: list, data) -> None:
    off = 0
    mv = memoryview(data)
    n = len(mv)
    for seg in segs:
        k = min(len(seg), n - off)
        if k <= 0:
            break
        seg[:k] = mv[off:off + k]
        off += k
