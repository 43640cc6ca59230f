"""The reduced real-Xen runs for CI, under QEMU: Xen 4.17 (one domU, one xen_9pfs device served by
xen9pd) and Xen 4.20 (plain `xl create` of type=xen_9pfsd devices, xen9pd holding libxl's node).
Each runs only when opted in (they take minutes): XEN9P_REALXEN=1 for 4.17, XEN9P_REALXEN_420=1 for
4.20. The full runs are tests/realpeers/xen/run.sh (see its README)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# Build (cold ~2 min) + .deb + boot (~30 s) + xen9pd and workers (~2 min) + one domU case (~10 min under TCG).
BUDGET_S = 3000

pytestmark = [pytest.mark.realpeer, pytest.mark.slow, pytest.mark.timeout(BUDGET_S + 300)]


def reduced_run(opt_in: str, suite: str, cases: str, extra_env: dict[str, str]) -> None:
    if os.environ.get(opt_in) != "1":
        pytest.skip(f"real-Xen lab ({suite}) runs only with {opt_in}=1 (minutes under QEMU/TCG)")
    for tool in ("qemu-system-x86_64", "apt-get", "dpkg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: cannot build or boot the Xen lab")
    if os.geteuid() != 0:
        pytest.skip("building the dom0 image (debootstrap, chroot) needs root")
    run_dir = Path(tempfile.mkdtemp(prefix=f"xen9p-realxen-ci-{suite}-"))
    env = dict(os.environ, XEN9P_XEN_SUITE=suite, XEN9P_REALXEN_CASES=cases, XEN9P_REALXEN_RUN_DIR=str(run_dir),
               XEN9P_REALXEN_TIMEOUT="2400", **extra_env)
    proc = subprocess.run([str(HERE / "run.sh")], env=env, capture_output=True, text=True, timeout=BUDGET_S)
    print(proc.stdout[-20000:])
    summary = run_dir / "summary.json"
    assert summary.exists(), f"no summary; run.sh rc={proc.returncode}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    data = json.loads(summary.read_text())
    assert data["passed"] > 0
    assert data["failed"] == [], data["failed"]
    assert [p for p in data["problems"] if not p.startswith("NOTE")] == []
    assert proc.returncode == 0


def test_reduced_realxen_run():
    reduced_run("XEN9P_REALXEN", "bookworm", "platform xen9p_only", {})


def test_reduced_realxen_420_run():
    # The basic workload part on the path= device, the limits on xl's default directory; no restart
    # (it waits for the 1,000-file part), which the full run does.
    reduced_run("XEN9P_REALXEN_420", "trixie", "xl_xen9pd",
                {"XEN9P_DOMU_EXTRA": "p9steps=basic", "XEN9P_RESTART": "0"})
