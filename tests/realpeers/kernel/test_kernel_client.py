"""The Linux kernel's 9p client (QEMU/TCG guest) against diod and against xen9p's socket server, for each
Debian kernel of kernel_sources; and against xen9p mounted with version=9p2000.u (guest/posix_u.sh: what
Linux can do over .u; diod serves 9P2000.L only). One boot per kernel, server and dialect collects every
check; each check of the guest's report is one test here."""
from __future__ import annotations

import pytest

from .catalog import DIOD_KNOWN_FAILURES, PLAN_U, selected_plan
from .guest_image import GuestBuildError, GuestImage, build_guest
from .kernel_sources import KernelSource, plan_for, selected_kernels
from .qemu_boot import qemu_binary
from .run_kernel_client import KernelRun, run_against

pytestmark = [pytest.mark.realpeer, pytest.mark.slow]

PLAN = selected_plan()
KERNELS = selected_kernels()
SERVERS = ("diod", "xen9p")
# A case: (kernel, server, plan). The 9P2000.L suite against both servers; the .u one against xen9p.
CASES = [(k, s, plan_for(k, PLAN)) for k in KERNELS for s in SERVERS] + [(k, "xen9p", PLAN_U) for k in KERNELS]


@pytest.fixture(scope="module")
def kernel_run(tmp_path_factory):
    """kernel_run(kernel, server, plan): boots the guest once per case, keeps the whole report."""
    images: dict[str, GuestImage | str] = {}
    runs: dict[tuple[str, str], KernelRun | str | Exception] = {}

    def get(kernel: KernelSource, server: str, plan) -> KernelRun:
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
        key = (kernel.name, server, plan.level)
        if key not in runs:
            try:
                run = run_against(server, plan, tmp_path_factory.mktemp(f"kernel-{kernel.name}-{server}-{plan.level}"),
                                  image=image)
            except Exception as e:  # every check of this run fails with it, once per test, in one line
                run = e
            runs[key] = run
            if isinstance(run, KernelRun):
                # Printed so diod's and xen9p's results sit side by side in the CI log (pytest -s or -rA).
                print("\n" + run.summary())
        run = runs[key]
        if isinstance(run, Exception):
            pytest.fail(f"the {kernel.name}/{server}/{plan.level} run failed: {type(run).__name__}: {run}",
                        pytrace=False)
        if isinstance(run, str):
            pytest.skip(run)
        return run
    return get


def _ids(case) -> str:
    kernel, server, plan = case
    return f"{kernel.name}-{server}" + ("-9p2000.u" if plan is PLAN_U else "")


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_guest_finished(kernel_run, case) -> None:
    run = kernel_run(*case)
    assert not run.boot.timed_out, f"guest hit the wall-clock limit; see {run.boot.log_path}"
    assert run.report.done is not None, f"guest never printed @@DONE; see {run.boot.log_path}"
    assert run.unexpected() == [], "guest reported checks the catalog does not know"
    if run.server == "xen9p":
        assert run.server_rc == 0, f"xen9p did not stop cleanly; see {run.server_log}"


@pytest.mark.parametrize("case,check", [(c, check) for c in CASES for check in c[2].expected_checks()],
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
