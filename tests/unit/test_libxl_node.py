"""Holding libxl's xen-9pfs node: who counts as a live holder (two backends must never serve one device)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from xen9p_supervisor.libxl_node import StartupError, hold_libxl_node, running_peers
from tests.supervisor_fakes import dead_pid
from tests.waiting import wait_for

BASE = "/local/domain/0/libxl/xen-9pfs"


class Store:
    """A dict behind the XenStore calls hold_libxl_node makes (read/write in a transaction)."""

    def __init__(self, **nodes: str) -> None:
        self.d = {f"{BASE}/{k}": v for k, v in nodes.items()}

    def read(self, path):
        return self.d.get(path)

    def write(self, path, value):
        self.d[path] = value

    def transaction(self, fn):
        return fn(self)


@pytest.mark.parametrize("nodes", [{}, {"state": "running", "pid": str(dead_pid())}, {"state": "running"}])
def test_free_or_stale_node_is_taken(nodes):
    xs = Store(**nodes)
    hold_libxl_node(xs, 0, peers=lambda: [])
    assert xs.d[f"{BASE}/state"] == "running" and xs.d[f"{BASE}/pid"] == str(os.getpid())


def test_live_pid_in_the_node_refuses():
    xs = Store(state="running", pid="1")
    with pytest.raises(StartupError, match="held by a running daemon \\(pid 1\\)"):
        hold_libxl_node(xs, 0, peers=lambda: [])
    assert xs.d[f"{BASE}/pid"] == "1"


@pytest.mark.parametrize("pid", [None, str(dead_pid())])
def test_a_running_xen_9pfsd_holds_a_node_without_a_live_pid(pid):
    """xen-9pfsd started other than by libxl writes state but no pid (seen in the Xen 4.20 lab)."""
    xs = Store(state="running", **({"pid": pid} if pid else {}))
    with pytest.raises(StartupError, match="xen-9pfsd pid 4242"):
        hold_libxl_node(xs, 0, peers=lambda: [4242])
    assert xs.d.get(f"{BASE}/pid") == pid  # nothing written


def test_running_peers_finds_a_process_by_its_command_name(tmp_path):
    exe = tmp_path / "xen-9pfsd"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    p = subprocess.Popen([str(exe), "60"])
    try:
        wait_for(lambda: p.pid in running_peers(), 10, "the fake xen-9pfsd in /proc")
    finally:
        p.kill()
        p.wait()
    assert p.pid not in running_peers()
    assert os.getpid() not in running_peers()
