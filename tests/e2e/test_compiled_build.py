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

# The test daemon's children get PYTHONPATH=<the tree>; env drops it (and the interpreter path xen9pd passes
# for its process titles, which would now name env), and -P keeps the working directory off the path:
# what the worker imports is the installed package.
INSTALLED_WORKER = f"env -u PYTHONPATH -u PYTHONEXECUTABLE {sys.executable} -P -m xen9p_worker"


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
