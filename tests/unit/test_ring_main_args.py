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


def test_requests_that_add_names_leave_the_loop_when_the_device_counts_names():
    """max-files may walk the whole export to admit one create: never on a ring's loop."""
    from xen9p_common.p9 import messages as M
    from xen9p_worker import handlers
    from xen9p_worker.ring_main import inline_ops

    free = inline_ops(0, False)
    assert handlers.ADDS_NAMES <= free and M.Tread in free and M.Tunlinkat in free
    for counted in (inline_ops(1000, False), inline_ops(0, True)):
        assert not handlers.ADDS_NAMES & counted
        assert M.Twalk in counted and M.Tunlinkat in counted and M.Tread in counted
