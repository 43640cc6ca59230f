"""Pure tests of the kernel-client harness: console parsing, cpio writer, catalog vs guest scripts.
They need no QEMU, so they run everywhere and keep the real-peer harness honest."""
from __future__ import annotations

import gzip
import re
import subprocess

import pytest

from .catalog import BOOT_CHECKS, PLAN_U, PLANS, POSIX_CHECKS, POSIX_U_CHECKS, selected_plan
from .console import parse_console
from .guest_image import GUEST_DIR, newc_archive, run_overlay


def test_console_results_phases_and_done() -> None:
    lines = [(0.5, "junk"), (1.0, "@@PHASE 0.40 booted kernel=6.1"), (3.0, "@@RESULT PASS boot.mount sut on /mnt\r"),
             (4.0, "[ 3.1] @@RESULT FAIL posix.x rc=1 boom"), (5.0, "@@RESULT PASS posix.x again"),
             (6.0, "@@PHASE 5.5 poweroff"), (6.1, "@@DONE pass=1 fail=1 skip=0")]
    rep = parse_console(lines)
    assert rep.results["boot.mount"].detail == "sut on /mnt"
    assert rep.results["posix.x"].status == "FAIL"   # a later PASS never hides a FAIL
    assert rep.done == (1, 1, 0)
    assert rep.counts() == {"PASS": 1, "FAIL": 1, "SKIP": 0}
    assert rep.phase_durations() == [("booted", 5.0)]


def test_console_without_done() -> None:
    assert parse_console([(1.0, "@@RESULT SKIP posix.xattr_list no tool")]).done is None


def test_newc_archive_is_read_by_cpio(tmp_path) -> None:
    if subprocess.run(["sh", "-c", "command -v cpio"], capture_output=True).returncode != 0:
        pytest.skip("cpio is not installed")
    data = newc_archive([("d", 0o040755, b""), ("d/f", 0o100644, b"hello"), ("d/l", 0o120777, b"f")])
    out = subprocess.run(["cpio", "-i", "-d", "--quiet"], input=data, cwd=tmp_path, capture_output=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "f").read_bytes() == b"hello"
    assert (tmp_path / "d" / "l").is_symlink()


def test_run_overlay_quotes_values() -> None:
    blob = gzip.decompress(run_overlay({"A": "x y", "B": "--rw=write --bs=1M"}))
    assert b"A='x y'\nB='--rw=write --bs=1M'\n" in blob


def test_catalog_matches_posix_script() -> None:
    text = (GUEST_DIR / "posix.sh").read_text()
    in_script = re.findall(r"^\s*(?:chk|must_fail) posix\.(\w+)", text, re.M)
    in_script += re.findall(r"for n in ([\w ]+); do\s*\n\s*result SKIP posix", text)[0].split()
    assert sorted(set(in_script)) == sorted(POSIX_CHECKS)
    assert len(set(POSIX_CHECKS)) == len(POSIX_CHECKS)


def test_catalog_matches_posix_u_script() -> None:
    text = (GUEST_DIR / "posix_u.sh").read_text()
    in_script = re.findall(r"^\s*(?:chk|must_fail) posixu\.(\w+)", text, re.M)
    assert in_script == list(POSIX_U_CHECKS)
    assert PLAN_U.expected_checks() == list(BOOT_CHECKS) + [f"posixu.{c}" for c in POSIX_U_CHECKS]
    assert PLAN_U.mount_opts("version=9p2000.L,msize=512000") == "version=9p2000.u,msize=512000"


@pytest.mark.parametrize("level", sorted(PLANS))
def test_plans_are_consistent(level: str) -> None:
    plan = PLANS[level]
    names = plan.expected_checks()
    assert len(names) == len(set(names))
    conf = plan.run_conf("version=9p2000.L")
    assert conf["FIO_JOBS"].split() == [j for j, _ in plan.fio_jobs]
    assert "link" not in plan.stressors and "symlink" not in plan.stressors  # they ignore --timeout


def test_suite_selection() -> None:
    assert selected_plan({}).level == "smoke"
    assert selected_plan({"XEN9P_KERNEL_SUITE": "full"}).level == "full"
    with pytest.raises(ValueError):
        selected_plan({"XEN9P_KERNEL_SUITE": "huge"})
