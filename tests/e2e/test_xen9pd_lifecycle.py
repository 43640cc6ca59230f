"""xen9pd end to end on the simulated platform with the fake worker: attach, serve, detach, re-attach, teardown.

Real processes (sim xenstored, xen9pd, workers); every wait polls xenstore or the control socket with a deadline.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import psutil
import pytest

from tests.e2e.xen9pd_helpers import ROOT, Guest, Xen9pd, env_for_children, procs_with
from tests.waiting import wait_for
from xen9p_common.procs import pid_alive
from xen9p_supervisor import toolstack


@pytest.fixture
def daemon(sim):
    tmp, xs = sim
    d = Xen9pd(tmp, tmp)
    yield d
    d.stop()


def test_attach_serve_detach_reattach(sim, daemon, tmp_path):
    tmp, xs = sim
    g = Guest(xs, 3).attach(tmp, tag="share3")
    g.wait_be(2)
    assert xs.read(g.be + "/versions") == "1"
    assert xs.read(g.be + "/max-rings") == "8"
    assert xs.read(g.be + "/max-ring-page-order") == "9"
    g.connect(2)
    dev = daemon.device("dom3/dev0")
    assert dev["state"] == "connected" and dev["tag"] == "share3" and len(dev["rings"]) == 2
    assert all(r["pid"] and r["state"] == "running" for r in dev["rings"])
    assert {r["cpu"] for r in dev["rings"]} == set(daemon.status()["daemon"]["cpus"][:2])
    # Frontend-initiated close, then a reconnect from Initialising.
    g.close()
    assert daemon.device("dom3/dev0")["rings"] == []
    g.reinit()
    g.connect(2)
    assert daemon.device("dom3/dev0")["state"] == "connected"
    # libxl-style detach reaches Closed well within libxl's 10 s, and the nodes go away.
    assert toolstack.detach(xs, domid=3, timeout=10) is True
    wait_for(lambda: daemon.device("dom3/dev0") is None, 10, "device forgotten")
    # Re-attach the same domid/devid: a fresh handshake.
    g.attach(tmp, tag="again")
    g.connect(2)
    assert daemon.device("dom3/dev0")["tag"] == "again"
    assert "dom3/dev0: Connected" in daemon.logs()


def test_xen9pctl_detach_remove_then_reattach_the_same_devid(sim, daemon, tmp_path):
    """The operator's hot-unplug: `xen9pctl detach --remove` closes the device and removes its nodes like
    libxl, so the guest's frontend goes away and `xen9pctl attach` of the same devid starts afresh."""
    tmp, xs = sim
    g = Guest(xs, 6).attach(tmp, tag="first")
    g.connect(2)
    pids = [r["pid"] for r in daemon.device("dom6/dev0")["rings"]]
    r = daemon.request("detach", {"device": "dom6/dev0", "remove": True}, timeout=10)
    assert r and r["ok"], r
    assert r["result"]["removed"] == [g.fe, g.be]
    assert xs.read(g.be) is None and xs.read(g.fe) is None
    wait_for(lambda: daemon.device("dom6/dev0") is None, 10, "device released after its nodes went")
    wait_for(lambda: not any(pid_alive(p) for p in pids), 10, "dom6 workers gone")
    # Without --remove the nodes stay (backend Closed) and an attach of the same devid is refused.
    r = daemon.request("attach", {"domid": 6, "devid": 0, "path": tmp, "tag": "again"}, timeout=10)
    assert r and r["ok"], r
    g.connect(2)
    assert daemon.device("dom6/dev0")["tag"] == "again"
    r = daemon.request("detach", {"device": "dom6/dev0"}, timeout=10)
    assert r and r["ok"] and "removed" not in r["result"]
    g.wait_be(6)
    r = daemon.request("attach", {"domid": 6, "devid": 0, "path": tmp, "tag": "third"}, timeout=10)
    assert r and not r["ok"] and r["error"]["code"] == "attach-failed" and "already exists" in r["error"]["message"]
    # An unknown device is a clear error, nothing removed.
    r = daemon.request("detach", {"device": "dom6/dev9", "remove": True}, timeout=10)
    assert r and not r["ok"] and xs.read(g.be + "/state") == "6"


def test_eight_devices_at_once(sim, daemon):
    tmp, xs = sim
    guests = [Guest(xs, 10 + i).attach(tmp, tag=f"t{i}") for i in range(8)]
    for g in guests:
        g.connect(2, wait=False)
    for g in guests:
        g.wait_be(4)
    st = daemon.status()
    assert st["daemon"]["devices"] == 8 and st["daemon"]["rings"] == 16
    pids = [r["pid"] for d in st["devices"] for r in d["rings"]]
    assert len(set(pids)) == 16 and all(pids)
    for g in guests[:4]:
        assert toolstack.detach(xs, domid=g.domid, timeout=10)
    wait_for(lambda: daemon.status()["daemon"]["devices"] == 4, 10, "4 devices left")
    for g in guests[4:]:
        assert g.be_state() == 4


def test_release_domain_tears_down(sim, daemon):
    tmp, xs = sim
    g = Guest(xs, 4).attach(tmp)
    g.connect(2)
    pids = [r["pid"] for r in daemon.device("dom4/dev0")["rings"]]
    other = Guest(xs, 5).attach(tmp)
    other.connect(1)
    xs.release_domain(4)
    wait_for(lambda: daemon.device("dom4/dev0") is None, 10, "dom4 device released")
    wait_for(lambda: not any(pid_alive(p) for p in pids), 10, "dom4 workers gone")
    assert daemon.device("dom5/dev0")["state"] == "connected"
    assert "dom4/dev0: released (domain_released)" in daemon.logs()
    # A new backend makes xen9pd rescan: the dead domain's leftover backend dir (nothing removed it)
    # must not be adopted again as a device, nor written to.
    Guest(xs, 6).attach(tmp).connect(1)
    assert daemon.device("dom4/dev0") is None
    assert g.be_state() == 4


def test_sigterm_closes_devices_and_leaves_no_process(sim):
    tmp, xs = sim
    d = Xen9pd(tmp, tmp)
    guests = [Guest(xs, 20 + i).attach(tmp) for i in range(3)]
    for g in guests:
        g.connect(2)
    assert len(procs_with(tmp)) >= 1 + 6  # the daemon and six workers (the sim dir is on their command lines)
    assert d.stop(signal.SIGTERM) == 0
    for g in guests:
        assert g.be_state() == 6
    assert xs.read("/local/domain/0/libxl/xen-9pfs/state") is None
    wait_for(lambda: not [p for p in procs_with(tmp) if "xenstored" not in " ".join(p.cmdline())], 5,
             "no xen9pd or worker process left")
    assert "stopped: 3 device(s) closed" in d.logs()


def test_xen9pctl_status_json_shows_every_ring(sim, daemon):
    tmp, xs = sim
    Guest(xs, 6).attach(tmp, tag="a").connect(2)
    Guest(xs, 7, kind="9pfs").attach(tmp, tag="b").connect(3)
    out = subprocess.run([sys.executable, "-m", "xen9p_supervisor.xen9pctl", "--control", daemon.control,
                         ] and [sys.executable, "-m", "xen9p_supervisor.xen9pctl", "--control", daemon.control, "--json",
                          "status"], capture_output=True, text=True, env=env_for_children(), cwd=ROOT, timeout=20)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    rings = {r["name"]: r for d in st["devices"] for r in d["rings"]}
    assert set(rings) == {"dom6/dev0/ring0", "dom6/dev0/ring1", "dom7/dev0/ring0", "dom7/dev0/ring1",
                          "dom7/dev0/ring2"}
    for r in rings.values():
        assert psutil.pid_exists(r["pid"])
        assert r["cpu"] in st["daemon"]["cpus"]
        assert psutil.Process(r["pid"]).cpu_affinity() == [r["cpu"]]
        assert psutil.Process(r["pid"]).cmdline()[0] == "xen9p " + r["name"]
    # The table form names every device with its workers.
    out = subprocess.run([sys.executable, "-m", "xen9p_supervisor.xen9pctl", "--control", daemon.control, "status"],
                         capture_output=True, text=True, env=env_for_children(), cwd=ROOT, timeout=20)
    assert out.returncode == 0 and "dom7/dev0" in out.stdout and "9pfs" in out.stdout


def test_libxl_node_refused_when_held_by_live_daemon(sim, tmp_path):
    tmp, xs = sim
    xs.write("/local/domain/0/libxl/xen-9pfs/state", "running")
    xs.write("/local/domain/0/libxl/xen-9pfs/pid", "1")  # pid 1 is alive: someone else's daemon
    d = Xen9pd(tmp, tmp, wait_ready=False)
    assert wait_for(lambda: d.proc.poll() is not None, 15, "xen9pd to refuse") and d.proc.returncode == 69
    assert "held by a running daemon" in d.logs()
    d.stop()


def test_sd_notify_ready_status_stopping_and_sighup_reload(sim):
    import socket
    tmp, xs = sim
    path = f"{tmp}/notify.sock"
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(path)
    ns.settimeout(10)
    d = Xen9pd(tmp, tmp, extra_env={"NOTIFY_SOCKET": path})
    try:
        first = ns.recv(4096).decode()
        assert first.startswith("READY=1") and "STATUS=serving" in first
        # SIGHUP: reload the file; a bad value is refused and the old config kept.
        with open(d.config_path, "a") as f:
            f.write('log_level = "debug"\n')
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.status()["daemon"]["log_level"] == "debug", 10, "reloaded log level")
        with open(d.config_path, "a") as f:
            f.write("max_rings = 0\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload refused, keeping the old configuration: bad config: max_rings")
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0
    msgs = []
    ns.settimeout(0.5)
    try:
        while True:
            msgs.append(ns.recv(4096).decode())
    except socket.timeout:
        pass
    ns.close()
    assert "STOPPING=1" in msgs


def test_sd_notify_watchdog_pings(sim):
    """WATCHDOG_USEC set by systemd: WATCHDOG=1 datagrams on NOTIFY_SOCKET, again and again."""
    import socket
    tmp, xs = sim
    path = f"{tmp}/notify-wd.sock"
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(path)
    ns.settimeout(10)
    d = Xen9pd(tmp, tmp, extra_env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    try:
        pings = 0
        while pings < 3:
            msg = ns.recv(4096).decode()
            pings += msg.split("\n").count("WATCHDOG=1")
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0
        ns.close()


def test_backend_dirs_of_destroyed_domains_are_removed(sim, daemon):
    """Findings F9 (real Xen): `xl destroy` removes /local/domain/<id> and the backends of kinds libxl
    knows, not xen_9pfs; xen9pd removes what is left once the domain is gone, and only then."""
    tmp, xs = sim
    from xen9p_sim.toolstack import destroy_domain
    g = Guest(xs, 8).attach(tmp)
    g.connect(2)
    q = Guest(xs, 9, kind="9pfs").attach(tmp)
    q.connect(1)
    keep = Guest(xs, 11).attach(tmp)
    keep.connect(1)
    destroy_domain(xs, 8)
    destroy_domain(xs, 9)
    wait_for(lambda: xs.read("/local/domain/0/backend/xen_9pfs/8") is None, 10, "dom8's xen_9pfs dir removed")
    assert xs.read("/local/domain/0/backend/9pfs/9") is None  # libxl's own kind: the toolstack removed it
    wait_for(lambda: daemon.device("dom8/dev0") is None and daemon.device("dom9/dev0") is None, 10,
             "devices of destroyed domains forgotten")
    assert "dom8: domain gone; removed its leftover backend dir /local/domain/0/backend/xen_9pfs/8" in daemon.logs()
    assert daemon.device("dom11/dev0")["state"] == "connected" and keep.be_state() == 4


def test_fresh_daemon_removes_leftovers_of_dead_domains_and_adopts_live_ones(sim):
    tmp, xs = sim
    from xen9p_sim.toolstack import destroy_domain
    dead = Guest(xs, 12).attach(tmp)
    live = Guest(xs, 13).attach(tmp)
    destroy_domain(xs, 12)  # no daemon yet: nothing removes backend/xen_9pfs/12
    assert xs.read("/local/domain/0/backend/xen_9pfs/12/0/state") is not None
    d = Xen9pd(tmp, tmp)
    try:
        live.connect(1)
        assert d.device("dom13/dev0")["state"] == "connected"
        assert xs.read("/local/domain/0/backend/xen_9pfs/12") is None
        assert d.device("dom12/dev0") is None
        assert "dom12: domain gone; removed its leftover backend dir" in d.logs()
    finally:
        d.stop()
    assert dead.be_state() is None
