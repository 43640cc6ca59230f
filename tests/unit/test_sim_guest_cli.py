"""`xen9psim guest --frontend`: a workload the guest's kernel cannot run is a usage error, before any xenstore."""
from __future__ import annotations

import pytest

from xen9p_sim.cli import EXIT_USAGE, main


@pytest.mark.parametrize("frontend,workload,known", [
    ("minios", "smoke", "known: minios"),
    ("linux", "minios", "known: smoke, fsstress"),
    ("unikraft", "nope", "unikraft"),
])
def test_unknown_workload_for_the_kernel_is_a_usage_error(tmp_path, capsys, frontend, workload, known):
    rc = main(["--sim-dir", str(tmp_path), "guest", "--domid", "3", "--tag", "t", "--frontend", frontend,
               "run", workload])
    assert rc == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"unknown workload {workload} for a {frontend} guest" in err and known in err
    assert list(tmp_path.iterdir()) == []


def test_frontend_choices_are_checked(tmp_path, capsys):
    assert main(["--sim-dir", str(tmp_path), "guest", "--domid", "3", "--tag", "t", "--frontend", "hurd",
                 "run", "smoke"]) == EXIT_USAGE
    assert "invalid choice: 'hurd'" in capsys.readouterr().err
