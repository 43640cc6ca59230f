"""The reduced real-Xen run for CI: one domU, one device kind (xen_9pfs served by xen9pd), under QEMU.
Runs only when XEN9P_REALXEN=1 (it takes minutes); the full run is tests/realpeers/xen/run.sh."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.realpeer, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
# Build (cold ~2 min) + boot (~30 s) + xen9pd and workers (~2 min) + one domU case (~10 min under TCG).
BUDGET_S = 3000


def test_reduced_realxen_run():
    if os.environ.get("XEN9P_REALXEN") != "1":
        pytest.skip("real-Xen lab runs only with XEN9P_REALXEN=1 (minutes under QEMU/TCG)")
    for tool in ("qemu-system-x86_64", "apt-get", "dpkg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: cannot build or boot the Xen lab")
    if os.geteuid() != 0:
        pytest.skip("building the dom0 image (debootstrap, chroot) needs root")
    run_dir = Path(tempfile.mkdtemp(prefix="xen9p-realxen-ci-"))
    env = dict(os.environ, XEN9P_REALXEN_CASES="platform xen9p_only", XEN9P_REALXEN_RUN_DIR=str(run_dir),
               XEN9P_REALXEN_TIMEOUT="2400")
    proc = subprocess.run([str(HERE / "run.sh")], env=env, capture_output=True, text=True, timeout=BUDGET_S)
    print(proc.stdout[-20000:])
    summary = run_dir / "summary.json"
    assert summary.exists(), f"no summary; run.sh rc={proc.returncode}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    data = json.loads(summary.read_text())
    assert data["passed"] > 0
    assert data["failed"] == [], data["failed"]
    assert [p for p in data["problems"] if not p.startswith("NOTE")] == []
    assert proc.returncode == 0
