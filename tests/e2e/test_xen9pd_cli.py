"""xen9pctl against a running and a missing xen9pd; xen9pd exit codes for bad config; control-socket hygiene."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from tests.e2e.xen9pd_helpers import ROOT, Guest, env_for_children, xen9pd_world
from tests.waiting import wait_for


def ctl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xen9p_supervisor.xen9pctl", *args], capture_output=True,
                          text=True, env=env_for_children(), cwd=ROOT, timeout=timeout)


def test_xen9pctl_without_daemon_exits_69_quickly(tmp_path):
    # The interpreter's own start-up is not the CLI's wait: measure the CLI call in-process.
    from xen9p_supervisor.xen9pctl import main
    for endpoint in (f"ipc://{tmp_path}/nothing.sock", "tcp://127.0.0.1:9"):
        t0 = time.monotonic()
        assert main(["--control", endpoint, "status"]) == 69
        assert time.monotonic() - t0 < 2.0
    # A stale socket file with nobody behind it.
    import socket
    s = socket.socket(socket.AF_UNIX)
    s.bind(f"{tmp_path}/stale.sock")
    s.close()
    t0 = time.monotonic()
    assert main(["--control", f"ipc://{tmp_path}/stale.sock", "ping"]) == 69
    assert time.monotonic() - t0 < 2.0
    out = ctl("--control", f"ipc://{tmp_path}/nothing.sock", "status")
    assert out.returncode == 69 and len(out.stderr.strip().splitlines()) == 1 and "not running" in out.stderr


def test_xen9pd_bad_config_exits_78(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text('max_ring_order = 12\n')
    out = subprocess.run([sys.executable, "-m", "xen9p_supervisor.xen9pd", "--config", str(conf)],
                         capture_output=True, text=True, env=env_for_children(), cwd=ROOT, timeout=20)
    assert out.returncode == 78 and "max_ring_order" in out.stderr


def test_xen9pd_without_xenstore_exits_69(tmp_path):
    out = subprocess.run([sys.executable, "-m", "xen9p_supervisor.xen9pd", "--platform", "sim", "--sim-dir",
                          str(tmp_path), "--control", f"ipc://{tmp_path}/c.sock"],
                         capture_output=True, text=True, env=env_for_children(), cwd=ROOT, timeout=20)
    assert out.returncode == 69 and "xenstore" in out.stderr


@pytest.fixture
def running(tmp_path):
    tmp = str(tmp_path)
    with xen9pd_world(tmp) as (xs, d):
        yield tmp, xs, d


def test_commands_end_to_end(running):
    tmp, xs, d = running
    sock = d.control[len("ipc://"):]
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    c = ("--control", d.control)
    out = ctl(*c, "attach", "--domid", "8", "--path", tmp, "--tag", "viactl", "--max-open-files", "7")
    assert out.returncode == 0, out.stderr
    xs.introduce_domain(8)
    g = Guest(xs, 8)
    g.connect(2)
    assert xs.read(g.fe + "/tag") == "viactl"
    assert [p.wire() for p in xs.get_perms(g.fe)] == ["n8", "r0"]
    assert [p.wire() for p in xs.get_perms(g.be)] == ["n0", "r8"]
    devs = json.loads(ctl(*c, "--json", "devices").stdout)
    assert devs[0]["name"] == "dom8/dev0" and devs[0]["limits"]["max_open_files"] == 7
    rings = json.loads(ctl(*c, "--json", "rings").stdout)
    assert [r["name"] for r in rings] == ["dom8/dev0/ring0", "dom8/dev0/ring1"]
    assert "dom8/dev0/ring1" in ctl(*c, "rings").stdout
    m = wait_for(lambda: (j := json.loads(ctl(*c, "--json", "metrics").stdout))["rings"].get(
        "dom8/dev0/ring0", {}).get("requests_total") and j, 10, "worker stats")
    assert m["devices"]["dom8/dev0"]["rings"] == 2 and "rss_bytes" in m["rings"]["dom8/dev0/ring0"]
    import zmq
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"metrics.dom8.dev0.ring1")
    sub.connect(f"ipc://{tmp}/metrics.sock")
    try:
        assert sub.poll(10000)
        topic, body = sub.recv_multipart()
        assert topic == b"metrics.dom8.dev0.ring1" and "requests_total" in json.loads(body)["metrics"]
    finally:
        sub.close(0)
    out = ctl(*c, "metrics", "--watch", "--interval", "0.1", "--count", "2")
    assert out.returncode == 0 and out.stdout.count("daemon uptime_seconds") == 2
    out = ctl(*c, "top", "--count", "1")
    assert out.returncode == 0 and "dom8/dev0" in out.stdout
    assert ctl(*c, "log-level", "debug").returncode == 0
    assert d.status()["daemon"]["log_level"] == "debug"
    assert ctl(*c, "reload").returncode == 0
    assert ctl(*c, "restart-ring", "dom8/dev0/ring9").returncode == 1
    out = ctl(*c, "detach", "dom8/dev0")
    assert out.returncode == 0, out.stderr
    g.wait_be(6)
    assert d.device("dom8/dev0")["state"] == "detached"


def test_control_rejects_garbage_and_unknown_commands(running):
    import zmq
    tmp, xs, d = running
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(d.control)
    try:
        for raw, code in ((b"{not json", "bad-json"), (b"[1,2]", "bad-request"), (b'{"v":7,"cmd":"ping"}', "bad-version"),
                          (b'{"v":1,"id":1,"cmd":"frobnicate"}', "unknown-command"),
                          (b'{"v":1,"id":2,"cmd":"detach","args":{}}', "bad-args")):
            s.send(raw)
            assert s.poll(5000)
            rep = json.loads(s.recv())
            assert rep["ok"] is False and rep["error"]["code"] == code
        # A client that never reads its replies does not block another one.
        hog = zmq.Context.instance().socket(zmq.DEALER)
        hog.setsockopt(zmq.LINGER, 0)
        hog.connect(d.control)
        for _ in range(200):
            hog.send(b'{"v":1,"cmd":"status"}')
        assert d.ping()
        hog.close(0)
    finally:
        s.close(0)
