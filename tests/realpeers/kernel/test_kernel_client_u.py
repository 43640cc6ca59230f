"""The Linux kernel's 9p client mounting xen9p with version=9p2000.u (QEMU/TCG guest): one boot runs
guest/posix_u.sh; each check of its report is one test. diod is not run: it serves 9P2000.L only."""
from __future__ import annotations

import pytest

from .catalog import PLAN_U
from .run_kernel_client import KernelRun, run_against
from .test_kernel_client import guest_image  # noqa: F401  (the module-scoped fixture)

pytestmark = [pytest.mark.realpeer, pytest.mark.slow]


@pytest.fixture(scope="module")
def kernel_run_u(guest_image, tmp_path_factory) -> KernelRun:  # noqa: F811
    run = run_against("xen9p", PLAN_U, tmp_path_factory.mktemp("kernel-u"), image=guest_image)
    if isinstance(run, str):
        pytest.skip(run)
    print("\n" + run.summary())
    return run


def test_guest_finished_u(kernel_run_u: KernelRun) -> None:
    assert not kernel_run_u.boot.timed_out, f"guest hit the wall-clock limit; see {kernel_run_u.boot.log_path}"
    assert kernel_run_u.report.done is not None, f"guest never printed @@DONE; see {kernel_run_u.boot.log_path}"
    assert kernel_run_u.unexpected() == [], "guest reported checks the catalog does not know"
    assert kernel_run_u.server_rc == 0, f"xen9p did not stop cleanly; see {kernel_run_u.server_log}"


@pytest.mark.parametrize("check", PLAN_U.expected_checks())
def test_check_u(kernel_run_u: KernelRun, check: str) -> None:
    res = kernel_run_u.report.results.get(check)
    where = f"(log {kernel_run_u.boot.log_path})"
    if res is None:
        pytest.fail(f"{check} missing from the guest's report {where}")
    assert res.status == "PASS", f"{check}: {res.detail} {where}"
