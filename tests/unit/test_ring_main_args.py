"""`python -m xen9p_worker ring`: nonsense arguments and environment exit 2 with a message, before touching anything."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = ["ring", "--platform", "sim", "--domid", "1", "--devid", "0", "--ring", "0", "--ring-ref", "1",
        "--evtchn", "1", "--state", "xen9p-none", "--export", "/nonexistent", "--security-model", "none"]


@pytest.mark.parametrize("extra,env,needle", [
    (["--spin-us", "-3"], {}, "--spin-us >= 0"),
    (["--stall-after", "-1"], {}, "--stall-after"),
    (["--threads", "0"], {}, "--threads >= 1"),
    ([], {"XEN9P_SPIN_US": "fast"}, "XEN9P_SPIN_US must be a number"),
])
def test_bad_worker_arguments_exit_2(extra, env, needle):
    r = subprocess.run([sys.executable, "-m", "xen9p_worker"] + BASE + extra, capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, **env), timeout=60)
    assert r.returncode == 2 and needle in r.stderr
