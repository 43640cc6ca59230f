"""The Linux kernel's 9p client (QEMU/TCG guest) against diod and against xen9p's socket server, for each
Debian kernel of kernel_sources. One boot per kernel and server collects every check; each check of the
guest's report is one test here."""
from __future__ import annotations

import pytest

from .catalog import DIOD_KNOWN_FAILURES, selected_plan
from .guest_image import GuestBuildError, GuestImage, build_guest
from .kernel_sources import KernelSource, plan_for, selected_kernels
from .qemu_boot import qemu_binary
from .run_kernel_client import KernelRun, run_against

pytestmark = [pytest.mark.realpeer, pytest.mark.slow]

PLAN = selected_plan()
KERNELS = selected_kernels()
SERVERS = ("diod", "xen9p")
CASES = [(k, s) for k in KERNELS for s in SERVERS]


@pytest.fixture(scope="module")
def kernel_run(tmp_path_factory):
    """kernel_run(kernel, server): boots the guest once per kernel and server, keeps the whole report."""
    images: dict[str, GuestImage | str] = {}
    runs: dict[tuple[str, str], KernelRun | str | Exception] = {}

    def get(kernel: KernelSource, server: str) -> KernelRun:
        if qemu_binary() is None:
            pytest.skip("qemu-system-x86_64 is not installed")
        if kernel.name not in images:
            try:
                images[kernel.name] = build_guest(kernel)
            except GuestBuildError as e:
                images[kernel.name] = f"cannot build the {kernel.name} guest: {e}"
        image = images[kernel.name]
        if isinstance(image, str):
            pytest.skip(image)
        key = (kernel.name, server)
        if key not in runs:
            try:
                run = run_against(server, plan_for(kernel, PLAN),
                                  tmp_path_factory.mktemp(f"kernel-{kernel.name}-{server}"), image=image)
            except Exception as e:  # every check of this run fails with it, once per test, in one line
                run = e
            runs[key] = run
            if isinstance(run, KernelRun):
                # Printed so diod's and xen9p's results sit side by side in the CI log (pytest -s or -rA).
                print("\n" + run.summary())
        run = runs[key]
        if isinstance(run, Exception):
            pytest.fail(f"the {kernel.name}/{server} run failed: {type(run).__name__}: {run}", pytrace=False)
        if isinstance(run, str):
            pytest.skip(run)
        return run
    return get


def _ids(case) -> str:
    return f"{case[0].name}-{case[1]}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_guest_finished(kernel_run, case) -> None:
    run = kernel_run(*case)
    assert not run.boot.timed_out, f"guest hit the wall-clock limit; see {run.boot.log_path}"
    assert run.report.done is not None, f"guest never printed @@DONE; see {run.boot.log_path}"
    assert run.unexpected() == [], "guest reported checks the catalog does not know"


@pytest.mark.parametrize("case,check", [(c, check) for c in CASES for check in plan_for(c[0], PLAN).expected_checks()],
                         ids=lambda v: v if isinstance(v, str) else _ids(v))
def test_check(kernel_run, case, check: str) -> None:
    run = kernel_run(*case)
    res = run.report.results.get(check)
    where = f"(kernel {run.kernel_version}, server {run.server}, log {run.boot.log_path})"
    if res is None:
        pytest.fail(f"{check} missing from the guest's report {where}")
    if res.status == "SKIP":
        pytest.skip(res.detail or "skipped by the guest")
    if res.status == "FAIL" and run.server == "diod" and check in DIOD_KNOWN_FAILURES:
        pytest.xfail(f"known diod behaviour: {DIOD_KNOWN_FAILURES[check]}")
    assert res.status == "PASS", f"{check}: {res.detail} {where}"
