"""`xen9psim demo` as a test: exit 0, zero guest errors, and nothing left behind, also after Ctrl-C.

The demo runs as a real process (it starts xenstored, xen9pd, ring workers and two guests itself).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.xen9pd_helpers import ROOT, env_for_children, procs_with, wait_for

SHM = "/dev/shm"


def _missing() -> str | None:
    for mod in ("xen9p_supervisor.xen9pd", "xen9p_supervisor.xen9pctl"):
        r = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, cwd=ROOT,
                           env=env_for_children(), timeout=60)
        if r.returncode != 0:
            return f"{mod} has not landed"
    r = subprocess.run([sys.executable, "-m", "xen9p_worker", "ring", "--help"], capture_output=True, cwd=ROOT,
                       env=env_for_children(), timeout=60)
    if r.returncode != 0:
        return "the ring worker (python -m xen9p_worker ring) has not landed"
    return None


@pytest.fixture(scope="module")
def pieces():
    why = _missing()
    if why:
        pytest.skip(why)


def _shm_xen9p() -> set[str]:
    return {n for n in os.listdir(SHM) if n.startswith("xen9p-")} if os.path.isdir(SHM) else set()


def _demo(*extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xen9p_supervisor.xen9psim", "demo", "--no-progress", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=env_for_children(), start_new_session=True)


def _sim_dir(output: str) -> str:
    m = re.search(r"simulated Xen in (\S+)", output)
    assert m, output
    return m.group(1)


def _assert_nothing_left(sim_dir: str, shm_before: set[str]) -> None:
    left = procs_with(sim_dir)
    for p in left:
        p.kill()
    assert not left, f"processes left behind: {[(p.pid, p.cmdline()[:4]) for p in left]}"
    assert not os.path.exists(sim_dir), f"{sim_dir} left behind"
    assert _shm_xen9p() - shm_before == set()


@pytest.mark.slow
def test_demo_runs_clean(pieces):
    shm_before = _shm_xen9p()
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
    assert [g["model"] for g in guests] == ["passthrough", "mapped-xattr"]
    for g in guests:
        assert g["errors"] == 0, out
        assert g["ops"] > 100 and g["requests"] > g["ops"] and g["mib"] > 1
    assert "$ xen9pctl status" in out and "connected" in out
    assert "no process or shared-memory segment left behind" in out
    _assert_nothing_left(_sim_dir(out), shm_before)


@pytest.mark.slow
def test_demo_ctrl_c_leaves_nothing_behind(pieces):
    shm_before = _shm_xen9p()
    proc = _demo("--scale", "3", "--timeout", "240")
    lines: list[str] = []
    try:
        # Interrupt once the guests are mounted and the workers are serving.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "mounted" in line and sum("mounted" in ln for ln in lines) == 2:
                break
        assert sum("mounted" in ln for ln in lines) == 2, "".join(lines)
        sim_dir = _sim_dir("".join(lines))
        assert procs_with(sim_dir), "nothing was running to interrupt"
        os.kill(proc.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C (to the demo only)
        out, _ = proc.communicate(timeout=120)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    text = "".join(lines) + out
    assert proc.returncode == 130, text
    assert "interrupted" in text
    wait_for(lambda: not procs_with(sim_dir), 10, "every demo process gone")
    _assert_nothing_left(sim_dir, shm_before)
