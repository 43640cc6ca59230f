"""`xen9psim demo` as a test: exit 0, zero guest errors, and nothing left behind, also after Ctrl-C.

The demo runs as a real process (it starts xenstored, xen9pd, ring workers and its three guests itself).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from xen9p_supervisor.devstate import segments_of
from tests.e2e.xen9pd_helpers import ROOT, env_for_children, procs_with
from tests.waiting import wait_for
from xen9p_sim.demo import DEMO_GUESTS, UNDER_WAY_OPS

SHM = "/dev/shm"


def _device_segments(output: str) -> set[str]:
    """/dev/shm segments of the demo's xen9pd (device state, named for its owner's pid)."""
    m = re.search(r"xen9pd pid (\d+)", output)
    assert m, output
    return segments_of(int(m.group(1)), SHM)


def _demo(*extra: str) -> subprocess.Popen:
    # Started as from a terminal: a run launched in the background by a non-interactive shell (`.ci/run &`)
    # ignores SIGINT, and an ignored disposition is inherited across exec, so the demo would never see Ctrl-C.
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-m", "xen9p_sim.cli", "demo", "--no-progress", *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                env=env_for_children(), start_new_session=True)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _sim_dir(output: str) -> str:
    m = re.search(r"simulated Xen in (\S+)", output)
    assert m, output
    return m.group(1)


def _assert_nothing_left(sim_dir: str, output: str) -> None:
    left = procs_with(sim_dir)
    for p in left:
        p.kill()
    assert not left, f"processes left behind: {[(p.pid, p.cmdline()[:4]) for p in left]}"
    assert not os.path.exists(sim_dir), f"{sim_dir} left behind"
    assert _device_segments(output) == set()


@pytest.mark.slow
def test_demo_runs_clean():
    proc = _demo("--json", "--timeout", "240")
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail("demo did not finish:\n" + out)
    assert proc.returncode == 0, out
    report = next(json.loads(ln) for ln in out.splitlines() if ln.startswith('{"guests"'))
    guests = report["guests"]
    assert [(g["frontend"], g["model"]) for g in guests] == [("linux", "passthrough"), ("linux", "mapped-xattr"),
                                                             ("minios", "none")]
    for g in guests:
        assert g["errors"] == 0, out
        assert g["requests"] > g["ops"] > (100 if g["frontend"] == "linux" else 10)
        assert g["mib"] > (1 if g["frontend"] == "linux" else 0)
    assert guests[2]["live_updates"] == 1  # the Mini-OS guest re-initialised mid-way and kept going
    assert "dom3 mounted (minios, 9P2000.u): msize 16384, 1 rings of order 4" in out
    assert "$ xen9pctl status" in out and "connected" in out
    assert "no process or shared-memory segment left behind" in out
    _assert_nothing_left(_sim_dir(out), out)


def _under_way(proc: subprocess.Popen) -> str:
    """The demo's output up to its "guests under way" line, checked: every guest mounted, each past
    UNDER_WAY_OPS operations and still running (with --until-interrupted they never finish on their own)."""
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if "guests under way:" in line:
            break
    text = "".join(lines)
    assert "guests under way:" in text, text
    assert sum("mounted" in ln for ln in lines) == len(DEMO_GUESTS), text
    ops = [int(n) for n in re.findall(r"dom\d+ (\d+) ops", text.split("guests under way:")[1])]
    assert len(ops) == len(DEMO_GUESTS) and min(ops) >= UNDER_WAY_OPS, text
    guests = [p for p in procs_with(_sim_dir(text)) if "guest" in p.cmdline()]
    assert len(guests) == len(DEMO_GUESTS), "every guest should still be working"
    return text


@pytest.mark.slow
def test_demo_ctrl_c_leaves_nothing_behind():
    # The interrupt lands on work in progress however fast the machine is: the guests never finish.
    proc = _demo("--until-interrupted", "--timeout", "240")
    try:
        before = _under_way(proc)
        sim_dir = _sim_dir(before)
        os.kill(proc.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C (to the demo only)
        out, _ = proc.communicate(timeout=120)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    text = before + out
    assert proc.returncode == 130, text
    assert "interrupted" in text
    wait_for(lambda: not procs_with(sim_dir), 10, "every demo process gone")
    _assert_nothing_left(sim_dir, text)


@pytest.mark.slow
def test_demo_killed_hard_leaves_no_process():
    """SIGKILL gives the demo no chance to clean up: its children (xenstored, xen9pd, the never-ending
    guests) get SIGTERM from the kernel as their parent dies, and xen9pd frees its device state."""
    proc = _demo("--until-interrupted", "--timeout", "240")
    try:
        text = _under_way(proc)
        sim_dir = _sim_dir(text)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    try:
        wait_for(lambda: not procs_with(sim_dir), 60, "every process of the SIGKILLed demo gone")
        assert _device_segments(text) == set()
    finally:
        for p in procs_with(sim_dir):
            p.kill()
        shutil.rmtree(sim_dir, ignore_errors=True)


def _run(*argv: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_walkthrough_by_hand(tmp_path):
    """docs/walkthrough.md, command by command: xenstored, xen9pd, attach, guest, xen9pctl, detach."""
    sim = tempfile.mkdtemp(prefix="walk", dir="/tmp")  # short: Unix socket paths are limited
    env = dict(env_for_children(), XEN9P_SIM_DIR=sim)
    env.pop("XEN9PD_CONTROL", None)
    ctl = f"ipc://{sim}/control.sock"
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "xen9p_sim.cli", "xenstored"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env,
                                      start_new_session=True))
        wait_for(lambda: os.path.exists(os.path.join(sim, "xenstored.sock")), 15, "xenstored socket")
        log = open(os.path.join(sim, "xen9pd.log"), "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "xen9p_supervisor.xen9pd", "--platform", "sim",
                                       "--sim-dir", sim, "--control", ctl, "--metrics", f"ipc://{sim}/metrics.sock",
                                       "--workers", f"ipc://{sim}/workers.sock"],
                                      stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                      start_new_session=True))
        wait_for(lambda: _run("xen9p_supervisor.xen9pctl", "--control", ctl, "ping", env=env).returncode == 0,
                 30, "xen9pctl ping")
        share = tmp_path / "share"
        share.mkdir()
        (share / "hello.txt").write_text("hello\n")
        r = _run("xen9p_sim.cli", "attach", "--domid", "5", "--path", str(share), "--tag", "share",
                 "--security-model", "mapped-xattr", env=env)
        assert r.returncode == 0, r.stderr
        assert "/local/domain/0/backend/xen_9pfs/5/0" in r.stdout
        r = _run("xen9p_sim.cli", "guest", "--domid", "5", "--tag", "share", "--rounds", "2",
                 "run", "smoke,readdir", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "0 errors" in r.stdout and "msize 131096, 2 rings of order 9" in r.stdout
        ran = re.findall(r"^  (smoke|readdir) ", r.stdout, re.M)
        assert ran == ["smoke", "readdir"] * 2, r.stdout  # --rounds 2: the list twice
        assert (share / "hello.txt").read_text() == "hello\n"
        r = _run("xen9p_sim.cli", "guest", "--domid", "5", "--tag", "share", "--rounds", "-1",
                 "run", "smoke", env=env)
        assert r.returncode == 2 and "--rounds" in r.stderr
        # --rounds 0 runs until SIGINT, which ends it after the workload in progress, with its summary.
        g = subprocess.Popen([sys.executable, "-m", "xen9p_sim.cli", "guest", "--domid", "5", "--tag", "share",
                              "--rounds", "0", "--progress", "run", "smoke"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        done_ops = 0
        for line in g.stdout:
            done_ops = json.loads(line).get("progress", {}).get("ops", 0)
            if done_ops > 200:  # a few smoke rounds in
                break
        g.send_signal(signal.SIGINT)
        out, err = g.communicate(timeout=60)
        assert g.returncode == 0, err
        summary = json.loads(out.strip().splitlines()[-1])["summary"]
        assert summary["errors"] == 0 and summary["ops"] >= done_ops and len(summary["workloads"]) >= 1
        # SIGTERM (what a demo's guests get when the demo dies) ends the guest at once, mid-workload.
        g = subprocess.Popen([sys.executable, "-m", "xen9p_sim.cli", "guest", "--domid", "5", "--tag", "share",
                              "--rounds", "0", "--progress", "run", "fsstress"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
        for line in g.stdout:
            if json.loads(line).get("progress", {}).get("ops", 0) > 50:
                break
        g.send_signal(signal.SIGTERM)
        out, _ = g.communicate(timeout=10)
        assert g.returncode == -signal.SIGTERM and '"summary"' not in out
        r = _run("xen9p_supervisor.xen9pctl", "--control", ctl, "--json", "status", env=env)
        assert r.returncode == 0, r.stderr
        devs = {d["name"]: d for d in json.loads(r.stdout)["devices"]}
        assert devs["dom5/dev0"]["tag"] == "share"
        r = _run("xen9p_sim.cli", "detach", "--domid", "5", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        r = _run("xen9p_sim.cli", "guest", "--domid", "5", "--tag", "share", "--timeout", "1",
                 "run", "smoke", env=env)
        assert r.returncode != 0  # the device is gone
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        left = procs_with(sim)
        for p in left:
            p.kill()
        shutil.rmtree(sim, ignore_errors=True)
    assert not left, f"processes left behind: {[p.pid for p in left]}"
