"""The fuzz targets in CI: kept findings replayed, and a short seeded coverage-guided run of each.

The long run (10^6 inputs per target) is `python -m tests.fuzz all` (docs/RELIABILITY.md).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys

import pytest

from tests.fuzz.__main__ import ROOT
from tests.fuzz.targets import NAMES

HERE = os.path.dirname(os.path.abspath(__file__))
REGRESSIONS = os.path.join(HERE, "regressions")
# Inputs per target in CI: seconds each on a loaded 2-core machine.
SHORT_RUNS = {"codec": 20000, "ring": 4000, "dispatch": 2000, "xenstore": 4000}


def _kept(target: str) -> list[str]:
    d = os.path.join(REGRESSIONS, target)
    return sorted(os.path.join(d, f) for f in os.listdir(d)) if os.path.isdir(d) else []


@pytest.mark.parametrize("target", [t for t in NAMES if _kept(t)])
def test_kept_findings_stay_fixed(target):
    mod = importlib.import_module(f"tests.fuzz.targets.{target}")
    try:
        for path in _kept(target):
            with open(path, "rb") as f:
                mod.one_input(f.read())
    finally:
        if hasattr(mod, "close"):
            mod.close()


@pytest.mark.parametrize("target", NAMES)
def test_short_seeded_fuzz_run_finds_nothing(target, tmp_path):
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install '.[test]')")
    runs = SHORT_RUNS[target]
    r = subprocess.run([sys.executable, "-m", "tests.fuzz", target, "--runs", str(runs), "--seed", "1",
                        "--artifacts", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert f"fuzz {target}: {runs} inputs (atheris, seed 1)" in r.stdout and "0 findings" in r.stdout, r.stdout
