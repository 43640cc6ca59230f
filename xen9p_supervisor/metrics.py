"""Metrics aggregation: worker stats + psutil per worker, summed per device and daemon, published on zmq PUB.

Numbers only; counters end in _total. Topics: metrics.dom3.dev0.ring1, metrics.dom3.dev0, metrics.daemon.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

import psutil

from xen9p_common import control

log = logging.getLogger("xen9pd")

REQUESTS = "requests_total"
BYTES = ("bytes_in_total", "bytes_out_total")


def flatten(obj: Any, prefix: str = "", out: dict | None = None, depth: int = 0) -> dict[str, float]:
    """{'op': {'Tread': 3}} -> {'op_Tread': 3}; drops anything that is not a finite number."""
    out = {} if out is None else out
    if depth > 4 or not isinstance(obj, dict):
        return out
    for k, v in obj.items():
        if not isinstance(k, str) or len(out) > 2000:
            continue
        key = f"{prefix}_{k}" if prefix else k
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            if v == v and v not in (float("inf"), float("-inf")):
                out[key] = v
        elif isinstance(v, dict):
            flatten(v, key, out, depth + 1)
    return out


class Metrics:
    """Keeps the latest snapshot; collect() is called by the main loop, readers get immutable copies."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._procs: dict[int, psutil.Process] = {}
        self._prev: dict[str, tuple[float, float, float]] = {}   # ring -> (t, requests, bytes)
        self.snapshot: dict = {"rings": {}, "devices": {}, "daemon": {}}
        self.started = clock()

    def _proc_stats(self, pid: int | None) -> dict[str, float]:
        if pid is None:
            return {}
        p = self._procs.get(pid)
        try:
            if p is None:
                p = self._procs[pid] = psutil.Process(pid)
                p.cpu_percent(None)  # first call primes the delta
            with p.oneshot():
                return {"cpu_percent": p.cpu_percent(None), "rss_bytes": p.memory_info().rss, "fds": p.num_fds()}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._procs.pop(pid, None)
            return {}

    def collect(self, devices: Iterable[Any], daemon: dict[str, float]) -> dict:
        now = self.clock()
        rings: dict[str, dict] = {}
        devs: dict[str, dict] = {}
        live_pids = set()
        for dev in devices:
            dsum: dict[str, float] = {}
            for r in (dev.rings.rings if dev.rings else []):
                m = dict(flatten(r.stats))
                m.update(self._proc_stats(r.pid))
                if r.pid:
                    live_pids.add(r.pid)
                m["restarts_total"] = r.restarter.restarts
                req = float(m.get(REQUESTS, 0))
                byt = float(sum(m.get(k, 0) for k in BYTES))
                prev = self._prev.get(r.name)
                if prev and now > prev[0] and req >= prev[1] and byt >= prev[2]:
                    m["requests_per_s"] = round((req - prev[1]) / (now - prev[0]), 3)
                    m["mb_per_s"] = round((byt - prev[2]) / (now - prev[0]) / 1e6, 6)
                else:
                    m["requests_per_s"], m["mb_per_s"] = 0.0, 0.0
                self._prev[r.name] = (now, req, byt)
                rings[r.name] = m
                for k, v in m.items():
                    dsum[k] = dsum.get(k, 0) + v
            dsum["restarts_total"] = dev.restarts()
            dsum["rings"] = len(dev.rings.rings) if dev.rings else 0
            devs[dev.name] = dsum
        for pid in list(self._procs):
            if pid not in live_pids:
                del self._procs[pid]
        for name in list(self._prev):
            if name not in rings:
                del self._prev[name]
        d = dict(daemon)
        d["uptime_seconds"] = round(now - self.started, 3)
        d["devices"] = len(devs)
        d["rings"] = len(rings)
        d["requests_per_s"] = round(sum(m.get("requests_per_s", 0) for m in rings.values()), 3)
        d["mb_per_s"] = round(sum(m.get("mb_per_s", 0) for m in rings.values()), 6)
        self.snapshot = {"rings": rings, "devices": devs, "daemon": d}
        return self.snapshot

    def publish(self, pub: Any) -> None:
        """Send the snapshot on a PUB socket: one [topic, json] message per ring, device and the daemon."""
        snap = self.snapshot
        msgs = []
        for name, m in snap["rings"].items():
            msgs.append((_topic(name), m))
        for name, m in snap["devices"].items():
            msgs.append((_topic(name), m))
        msgs.append((control.metrics_topic(), snap["daemon"]))
        for topic, m in msgs:
            try:
                pub.send_multipart([topic.encode(), control.dumps({"v": control.VERSION, "metrics": m})],
                                   flags=_NOBLOCK)
            except Exception as e:  # a PUB socket never blocks; anything else is logged, not fatal
                log.debug("metrics publish failed: %s", e)


try:
    import zmq
    _NOBLOCK = zmq.NOBLOCK
except ImportError:  # pragma: no cover
    _NOBLOCK = 0


def _topic(name: str) -> str:
    """'dom3/dev0/ring1' -> 'metrics.dom3.dev0.ring1'."""
    return "metrics." + name.replace("/", ".")


class PrometheusExporter:
    """Serves the latest snapshot on /metrics through prometheus-client (optional dependency)."""

    def __init__(self, metrics: Metrics, listen: str) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        host, _, port = listen.rpartition(":")
        self.metrics = metrics
        self._Counter, self._Gauge = CounterMetricFamily, GaugeMetricFamily
        registry = CollectorRegistry()
        registry.register(self)
        self.server = start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)

    def collect(self):  # called on the exporter's thread; reads one immutable snapshot
        snap = self.metrics.snapshot
        fams: dict[str, Any] = {}

        def add(scope: str, labels: dict[str, str], m: dict) -> None:
            for k, v in m.items():
                name = "xen9p_" + scope + "_" + "".join(c if c.isalnum() else "_" for c in k)
                if name.endswith("_total"):
                    base = name[:-6]
                    fam = fams.get(name) or fams.setdefault(name, self._Counter(base, k, labels=list(labels)))
                else:
                    fam = fams.get(name) or fams.setdefault(name, self._Gauge(name, k, labels=list(labels)))
                try:
                    fam.add_metric(list(labels.values()), v)
                except ValueError:
                    pass

        for name, m in snap["rings"].items():
            add("ring", {"ring": name}, m)
        for name, m in snap["devices"].items():
            add("device", {"device": name}, m)
        add("daemon", {}, snap["daemon"])
        yield from fams.values()
