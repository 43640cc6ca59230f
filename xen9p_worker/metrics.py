"""Per-ring counters, per-op counts and latency histograms, and queue depth, as flat numbers.

The worker records on its hot path (a few integer adds); snapshot() feeds W_STATS messages.
"""
from __future__ import annotations

import bisect
import threading

from xen9p_common.p9 import messages as M

# Upper bounds (microseconds) of the latency histogram buckets; the last bucket is +Inf.
LATENCY_BUCKETS_US = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000, 250000, 1000000)
_BOUNDS_NS = tuple(b * 1000 for b in LATENCY_BUCKETS_US)
_NAMES = {cls.TYPE: cls.__name__ for cls in M.REGISTRY}


class RingMetrics:
    """Counters of one ring; safe to update from the loop and the I/O threads."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self.requests = 0
        self.replies = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.errors = 0        # Rlerror and Rerror replies
        self.resumed = 0       # requests found in flight by a restarted worker
        self.flushes = 0
        self.notifies = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._ops: dict[int, list[int]] = {}  # mtype -> [count, sum_ns, buckets...]

    def request(self, size: int) -> None:
        # Called on the loop thread only.
        self.requests += 1
        self.bytes_in += size
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def reply(self, mtype: int, size: int, error: bool, elapsed_ns: int) -> None:
        """One reply published for a request of type `mtype` (the T message)."""
        with self._mu:
            self.replies += 1
            self.bytes_out += size
            self.errors += error
            self.in_flight -= 1
            h = self._ops.get(mtype)
            if h is None:
                h = self._ops[mtype] = [0, 0] + [0] * (len(_BOUNDS_NS) + 1)
            h[0] += 1
            h[1] += elapsed_ns
            h[2 + bisect.bisect_left(_BOUNDS_NS, elapsed_ns)] += 1

    def notified(self) -> None:
        """One event-channel notify sent to the guest (from the loop or an I/O thread)."""
        with self._mu:
            self.notifies += 1

    def dropped(self) -> None:
        """A request that will never be answered (flushed before it ran)."""
        with self._mu:
            self.in_flight -= 1

    def snapshot(self) -> dict[str, float]:
        """Flat name -> number; counters end in _total (the supervisor's schema)."""
        with self._mu:
            out: dict[str, float] = {
                "requests_total": self.requests, "replies_total": self.replies,
                "bytes_in_total": self.bytes_in, "bytes_out_total": self.bytes_out,
                "errors_total": self.errors, "resumed_total": self.resumed,
                "flushes_total": self.flushes, "notifies_total": self.notifies,
                "queue_depth": self.in_flight, "queue_depth_max": self.max_in_flight,
            }
            for mtype, h in self._ops.items():
                name = _NAMES.get(mtype, f"type{mtype}")
                out[f"op_{name}_total"] = h[0]
                out[f"op_{name}_latency_us_sum"] = h[1] / 1000.0
                acc = 0
                for bound, n in zip(LATENCY_BUCKETS_US + ("inf",), h[2:]):
                    acc += n  # cumulative, as Prometheus histograms are
                    out[f"op_{name}_latency_us_le_{bound}"] = acc
        return out

    def counters(self) -> dict[str, int]:
        """The subset the device state keeps per ring (DeviceState.RING_COUNTERS)."""
        return {"requests_total": self.requests, "replies_total": self.replies,
                "bytes_in_total": self.bytes_in, "bytes_out_total": self.bytes_out,
                "errors_total": self.errors, "resumed_total": self.resumed,
                "flushes_total": self.flushes, "in_flight": max(0, self.in_flight)}
