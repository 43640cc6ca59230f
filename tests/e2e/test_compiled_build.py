"""The compiled build (`pip install .` runs mypyc over xen9p_common.buildinfo.COMPILED_MODULES) serving guests.

The rest of the suite runs this tree's .py files (the source of truth). These tests run the ring workers from
the package installed for this interpreter instead — the compiled build where it was compiled — through the
demo (three guests, Mini-OS live update included) and a kill storm (crash resumption through the journal).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import pytest

from bench import targets
from tests.e2e.killstorm import check, storm

# The test daemon's children get PYTHONPATH=<the tree>; env drops it, and -P keeps the working directory off
# the path: what the worker imports is the installed package. (A wrapper like env also loses the title
# xen9pd gives argv[0], which adoption copes with: see the last test.)
INSTALLED_WORKER = f"env -u PYTHONPATH {sys.executable} -P -m xen9p_worker"


def _installed_build() -> str:
    try:
        return targets.worker_build("installed")
    except targets.TargetError:
        pytest.skip(f"xen9p is not installed for {sys.executable} (pip install .)")


@pytest.fixture(scope="module")
def compiled() -> None:
    """Skips, with the true reason, where the installed package could not be the compiled build; fails where
    it should be and is not (a broken compiled build must not pass as a skip)."""
    build = _installed_build()
    if build == "compiled":
        return
    if os.environ.get("XEN9P_PURE", "") not in ("", "0"):
        pytest.skip(f"XEN9P_PURE is set: the installed xen9p is the {build} build")
    header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if not (shutil.which(sysconfig.get_config_var("CC").split()[0] if sysconfig.get_config_var("CC") else "cc")
            and os.path.exists(header)):
        pytest.skip(f"no C compiler or no {header}: pip installed the {build} build")
    pytest.fail(f"the installed xen9p is the {build} build although this machine can compile it: "
                "reinstall with `pip install .` and read its output")


@pytest.mark.slow
def test_demo_on_the_compiled_workers(compiled, tmp_path):
    sim = tempfile.mkdtemp(prefix="cdemo", dir="/tmp")  # short: Unix socket paths are limited
    try:
        r = subprocess.run([sys.executable, "-P", "-m", "xen9p_sim.cli", "demo", "--json", "--no-progress", "--keep",
                            "--sim-dir", sim, "--timeout", "240"], cwd=targets.worker_cwd("installed"),
                           env=targets.worker_env("installed"), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "no process or shared-memory segment left behind" in r.stdout
        log = open(os.path.join(sim, "xen9pd.log")).read()
        bound = re.findall(r"worker pid \d+ mapped and bound(?: \((\w+) build\))?", log)
        assert bound and set(bound) == {"compiled"}, log[-3000:]  # 2 + 2 + 1 rings, all compiled
    finally:
        shutil.rmtree(sim, ignore_errors=True)


@pytest.mark.slow
def test_kill_storm_on_the_compiled_workers(compiled):
    result = storm(kills=5, guests=4, seed=1, worker_cmd=INSTALLED_WORKER)
    check(result)
    assert sum(result["killed"].values()) == 5
    assert result["builds"] == ["compiled"], result["builds"]  # the restarted workers too


@pytest.mark.slow
def test_compiled_workers_started_through_a_wrapper_are_adopted_by_the_next_daemon(compiled):
    """INSTALLED_WORKER is a wrapper (env), so the workers run without the title xen9pd gives argv[0]:
    the next daemon must still find them (by the device state each maps) and adopt them, not start
    rivals that find the ring held and give the device up."""
    from tests.e2e.real_guest import Load, RealGuest, World, shut_down
    from tests.e2e.xen9pd_helpers import ring
    from tests.waiting import wait_for

    world = World("cad", worker_cmd=INSTALLED_WORKER)
    g = RealGuest(world, 40).mount()
    load = Load(g.client, g.root, threads=2, burst=8, files=1).start()
    try:
        load.wait_ops(50, "workload under way")
        names = [f"{g.name}/ring{i}" for i in (0, 1)]
        pids = {n: ring(world.daemon, n)["pid"] for n in names}
        world.daemon.stop(9)
        new = world.start_daemon()
        wait_for(lambda: all(ring(new, n)["state"] == "running" for n in names), 60, "both rings serving again")
        assert {n: ring(new, n)["pid"] for n in names} == pids, new.logs()[-3000:]
        assert f"{g.name}: adopted from the previous xen9pd" in new.logs()
        assert {ring(new, n).get("build") for n in names} <= {"compiled", None}
        load.wait_ops(100, "workload going on under the new daemon")
        load.stop()
        assert not load.errors, load.errors
        assert load.verify_files(g.export) > 0
    finally:
        shut_down([load], [g], world)
