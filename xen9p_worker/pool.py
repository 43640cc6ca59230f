"""A fixed pool of daemon threads fed by one SimpleQueue, for blocking filesystem work.

Cheaper per task than concurrent.futures (no Future objects): the dispatcher
never waits on a result, replies are sent from the worker thread.
"""
from __future__ import annotations

import logging
import queue
import threading

log = logging.getLogger("xen9p.pool")


class WorkerPool:
    def __init__(self, size: int, name: str = "xen9p-io") -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, size))]
        for t in self._threads:
            t.start()

    def submit(self, fn, *args) -> None:
        self._q.put((fn, args))

    def close(self, timeout: float = 5.0) -> None:
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            t.join(timeout)

    def _loop(self) -> None:
        get = self._q.get
        while True:
            item = get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # the task reports its own errors; this is a last resort
                log.exception("worker task failed")
