"""The Linux kernel's 9p client (QEMU/TCG guest) against diod and against xen9p's socket server.
One boot per server collects every check; each check of the guest's report is one test here."""
from __future__ import annotations

import pytest

from .catalog import DIOD_KNOWN_FAILURES, selected_plan
from .guest_image import GuestBuildError, build_guest
from .qemu_boot import qemu_binary
from .run_kernel_client import KernelRun, run_against

pytestmark = [pytest.mark.realpeer, pytest.mark.slow]

PLAN = selected_plan()
SERVERS = ("diod", "xen9p")


@pytest.fixture(scope="module")
def guest_image():
    if qemu_binary() is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    try:
        return build_guest()
    except GuestBuildError as e:
        pytest.skip(f"cannot build the guest: {e}")


@pytest.fixture(scope="module", params=SERVERS)
def kernel_run(request, guest_image, tmp_path_factory) -> KernelRun:
    """Boots the guest once against this server and keeps the whole report for the checks."""
    server = request.param
    run = run_against(server, PLAN, tmp_path_factory.mktemp(f"kernel-{server}"), image=guest_image)
    if isinstance(run, str):
        pytest.skip(run)
    # Printed so diod's and xen9p's results sit side by side in the CI log (pytest -s or -rA).
    print("\n" + run.summary())
    return run


def test_guest_finished(kernel_run: KernelRun) -> None:
    assert not kernel_run.boot.timed_out, f"guest hit the wall-clock limit; see {kernel_run.boot.log_path}"
    assert kernel_run.report.done is not None, f"guest never printed @@DONE; see {kernel_run.boot.log_path}"
    assert kernel_run.unexpected() == [], "guest reported checks the catalog does not know"


@pytest.mark.parametrize("check", PLAN.expected_checks())
def test_check(kernel_run: KernelRun, check: str) -> None:
    res = kernel_run.report.results.get(check)
    where = f"(server {kernel_run.server}, log {kernel_run.boot.log_path})"
    if res is None:
        pytest.fail(f"{check} missing from the guest's report {where}")
    if res.status == "SKIP":
        pytest.skip(res.detail or "skipped by the guest")
    if res.status == "FAIL" and kernel_run.server == "diod" and check in DIOD_KNOWN_FAILURES:
        pytest.xfail(f"known diod behaviour: {DIOD_KNOWN_FAILURES[check]}")
    assert res.status == "PASS", f"{check}: {res.detail} {where}"
