"""Paths an operator hits that nothing else exercises: two devices in one domain, the Prometheus endpoint.

One sim xenstored and one xen9pd with real workers and a Prometheus exporter for the module.
"""
from __future__ import annotations

import os
import socket
import urllib.request

import pytest

from tests.e2e.real_guest import RealGuest, World
from tests.waiting import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world():
    pytest.importorskip("prometheus_client", reason="the Prometheus exporter needs prometheus-client")
    port = _free_port()
    w = World("ops", prometheus=f"127.0.0.1:{port}", metrics_interval=0.2)
    w.port = port
    yield w
    w.close()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        return r.read().decode()


def _sample(text: str, name: str, label: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_two_devices_in_one_domain(world):
    a = RealGuest(world, 51, tag="first").mount()
    b = RealGuest(world, 51, tag="second", devid=1).mount()
    try:
        assert a.fe.devid == 0 and b.fe.devid == 1
        with a.root.create("only-a") as f:
            f.write(b"a")
        with b.root.create("only-b") as f:
            f.write(b"b")
        assert sorted(os.listdir(a.export)) == ["only-a"] and sorted(os.listdir(b.export)) == ["only-b"]
        devs = {d["name"]: d for d in world.daemon.status()["devices"]}
        assert {"dom51/dev0", "dom51/dev1"} <= set(devs)
        assert devs["dom51/dev0"]["tag"] == "first" and devs["dom51/dev1"]["tag"] == "second"
        b.close(destroy=False)           # one device goes; the other serves on
        assert a.works("after")
    finally:
        b.close(destroy=False)
        a.close()


def test_prometheus_endpoint_serves_daemon_device_and_ring_metrics(world):
    g = RealGuest(world, 52).mount()
    try:
        assert g.works()
        name = "dom52/dev0"
        text = wait_for(lambda: (t := _scrape(world.port)) and _sample(t, "xen9p_device_requests_total",
                                                                      f'device="{name}"')
                        and _sample(t, "xen9p_ring_requests_total", f'ring="{name}/ring') is not None and t,
                        15, "the device's and its rings' request counters on /metrics")
        assert _sample(text, "xen9p_device_requests_total", f'device="{name}"') > 0
        assert any(line.startswith("xen9p_daemon_") for line in text.splitlines())
        assert "# TYPE xen9p_device_requests_total counter" in text
    finally:
        g.close()
