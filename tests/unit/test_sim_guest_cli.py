"""`xen9psim guest`: a workload the guest's kernel cannot run is a usage error, before any xenstore; its
--progress lines stay whole when the reporter thread and the main thread both write."""
from __future__ import annotations

import io
import json
import sys
import threading

import pytest

from xen9p_sim import cli
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


def test_progress_lines_from_two_threads_never_run_together(monkeypatch):
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", out)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        n = 20000
        t = threading.Thread(target=lambda: [cli.emit({"progress": {"ops": i}}) for i in range(n)])
        t.start()
        for i in range(n):
            cli.emit({"mounted": {"n": i}})
        t.join()
    finally:
        sys.setswitchinterval(old)
    out.flush()
    lines = out.buffer.getvalue().decode().splitlines()
    msgs = [json.loads(ln) for ln in lines]  # a line run together with another does not parse
    assert sum("mounted" in m for m in msgs) == n and sum("progress" in m for m in msgs) == n
