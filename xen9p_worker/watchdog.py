"""A ring worker's own stall detector: a thread that notices when the loop stops passing or a
request stays unanswered, says which and where in the log, and dumps every thread's stack once.

The supervisor only sees heartbeats, which a loop that keeps passing sends even while one
request is stuck behind it (a lost wakeup, a wedged I/O thread, a journal that never frees).
The report is made once per incident and re-armed when the worker is healthy again.
"""
from __future__ import annotations

import faulthandler
import logging
import sys
import threading
import time
from typing import Callable

log = logging.getLogger("xen9p.watchdog")


class Watchdog:
    """Checks `worker.health(now)` every `period` seconds; reports findings older than `stall_after`."""

    def __init__(self, worker, *, stall_after: float = 30.0, period: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, dump: Callable[[], None] | None = None) -> None:
        if stall_after <= 0 or period <= 0:
            raise ValueError("watchdog stall_after and period must be positive")
        self.worker = worker
        self.stall_after = stall_after
        self.period = period
        self.clock = clock
        self.dump = dump or (lambda: faulthandler.dump_traceback(file=sys.stderr, all_threads=True))
        self.reports = 0
        self._reported = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> str | None:
        """One look; returns the report made now (None when healthy or already reported)."""
        problems = self.worker.health(self.clock(), self.stall_after)
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
