"""A ring worker's own stall detector: a thread that notices when the loop stops passing, a request
stays unanswered or requests stay queued but untaken, says which and where in the log, and dumps
every thread's stack once.

The supervisor only sees heartbeats, which a loop that keeps passing sends even while one
request is stuck behind it (a lost wakeup, a wedged I/O thread, a journal that never frees).
The report is made once per incident and re-armed when the worker is healthy again. Everything
here only reads the worker's state, from another thread, and tolerates it changing meanwhile.
"""
from __future__ import annotations

import faulthandler
import logging
import sys
import threading
import time
from typing import Callable

from xen9p_common.p9 import messages as M

log = logging.getLogger("xen9p.watchdog")
_M32 = 0xFFFFFFFF


def type_name(mtype: int) -> str:
    cls = M.BY_TYPE.get(mtype)
    return cls.__name__ if cls is not None else f"type {mtype}"


def where_waits(w, p) -> str:
    """Where request `p` of ring worker `w` is: held for room, deferred, replying, or the dispatcher's word."""
    if any(h[0] is p for h in list(w._held)):
        return "held: its reply does not fit the in-ring yet"
    if any(d[0] is p for d in list(w._deferred)):
        return "reply deferred: no room or reply lock busy"
    if p.held:
        return "writing its reply"
    state = getattr(w.session, "request_state", lambda tag: None)(p.tag)
    return f"dispatcher: {state}" if state else "handed to the dispatcher, not in its table"


def ring_picture(w) -> str:
    """The ring's indexes as we and the page see them, and the worker's queues."""
    r = w.ring
    if r is None:
        return "ring not mapped"
    try:
        page_prod, page_in_cons = r.page_out_prod(), r.page_in_cons()
    except (ValueError, AttributeError):  # released at shutdown
        return "ring released"
    return (f"out_cons {r.out_cons:#x} cursor {r.read_cursor:#x} out_prod {page_prod:#x}; "
            f"in_cons {page_in_cons:#x} in_prod {r.in_prod:#x} reserved {r.reserved:#x}; "
            f"{len(w._order)} in flight, {len(w._held)} held, {len(w._deferred)} deferred; "
            f"journal {w.journal.free_slots()}/{w.journal.slots} free")


class Watchdog:
    """Looks at a RingWorker every `period` seconds; reports what is stuck for over `stall_after`."""

    def __init__(self, worker, *, stall_after: float = 30.0, period: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, dump: Callable[[], None] | None = None,
                 probe: Callable[[float], list[str]] | None = None) -> None:
        if stall_after <= 0 or period <= 0:
            raise ValueError("watchdog stall_after and period must be positive")
        self.worker = worker
        self.stall_after = stall_after
        self.period = period
        self.clock = clock
        self.dump = dump or (lambda: faulthandler.dump_traceback(file=sys.stderr, all_threads=True))
        self.probe = probe or self.problems
        self.reports = 0
        self._reported = False
        self._untaken: tuple[int, float] | None = None  # (read cursor, when first seen with bytes past it)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def problems(self, now: float) -> list[str]:
        """What looks stuck now: a loop that stopped passing, the oldest request unanswered for too
        long (with where it waits), bytes queued past the read cursor and not taken; plus the
        ring's picture when anything is."""
        w, limit = self.worker, self.stall_after
        out = []
        idle = now - w._pass_at
        if idle > limit:
            out.append(f"the loop thread has not passed for {idle:.0f}s")
        try:
            order = list(w._order)
        except RuntimeError:  # changed while copied: the loop is moving, look next time
            order = []
        now_ns = time.monotonic_ns()
        for p in order:
            age = (now_ns - p.t0) / 1e9
            if age <= limit:
                break  # younger ones follow
            where = where_waits(w, p)
            if p.finished or "parked" in where:
                continue  # a Tlock waiting for its lock is not stuck
            out.append(f"request tag {p.tag} {type_name(p.mtype)} at {p.index:#x} unanswered for "
                       f"{age:.0f}s ({where})")
            break
        r = w.ring
        if r is not None:
            try:
                cur, prod = r.read_cursor, r.page_out_prod()
            except (ValueError, AttributeError):
                cur = prod = 0
            if cur == prod:
                self._untaken = None
            elif self._untaken is None or self._untaken[0] != cur:
                self._untaken = (cur, now)  # something queued past the cursor: watch it move
            elif now - self._untaken[1] > limit:
                out.append(f"{(prod - cur) & _M32} bytes queued past the read cursor {cur:#x} "
                           f"not taken for {now - self._untaken[1]:.0f}s")
        if out:
            out.append(ring_picture(w))
        return out

    def check(self) -> str | None:
        """One look; returns the report made now (None when healthy or already reported)."""
        problems = self.probe(self.clock())
        if not problems:
            if self._reported:
                log.warning("%s: recovered", self.worker.name)
            self._reported = False
            return None
        if self._reported:
            return None
        self._reported = True
        self.reports += 1
        text = "; ".join(problems)
        log.warning("%s: stalled: %s; stacks of every thread follow", self.worker.name, text)
        try:
            self.dump()
        except (OSError, ValueError) as e:  # stderr closed: the warning above is what we have
            log.warning("%s: could not dump stacks: %s", self.worker.name, e)
        return text

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="xen9p-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.period + 1.0)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.check()
            except Exception:  # never let the detector take the worker down
                log.exception("%s: watchdog check failed", self.worker.name)
