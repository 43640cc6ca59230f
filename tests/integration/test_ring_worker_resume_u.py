"""SIGKILL a ring worker at each journal step of a non-idempotent 9P2000.u reply (Tcreate of a
directory and of a file, Tclunk, Tremove, Twstat with a rename, a clunk after ORCLOSE): its
successor answers each request exactly once and nothing is applied twice (the .L cases:
test_ring_worker_resume.py)."""
from __future__ import annotations

import os

import pytest

from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M
from xen9p_common.p9.stat import STAT_DONT_TOUCH

from .ring_worker_harness import Device

U = C.VERSION_9P2000U
# Ring 1 serves (as its n-th reply): 1 Rversion, 2 Twalk, then these.
OPS = {"create_dir": 3, "clunk": 4, "remove": 5, "create_file": 6, "wstat": 7, "stat": 8, "orclose": 9}


@pytest.fixture
def device(tmp_path):
    d = Device(tmp_path, num_rings=2, order=1, max_fids=256)
    yield d
    d.close()


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("point", ["applied", "done", "replying", "published"])
def test_crash_at_each_journal_step_u(device, point, op):
    d = device
    d.start(0)
    d.start(1, extra_env={"XEN9P_RING_FAULT": f"{point}:{OPS[op]}"})
    steps = [
        (M.Tversion(M.NOTAG, 8192, U), M.Rversion),
        (M.Tattach(0, 0, 0, "root", "", 0), M.Rattach),                          # ring 0
        (M.Twalk(1, 0, 5, []), M.Rwalk),                                          # ring 1, reply 2
        (M.Tcreate(3, 5, "d", C.DMDIR | 0o755, C.OREAD, ""), M.Rcreate),          # reply 3
        (M.Tclunk(5, 5), M.Rclunk),                                               # reply 4
        (M.Twalk(2, 0, 6, ["d"]), M.Rwalk),                                       # ring 0
        (M.Tremove(7, 6), M.Rremove),                                             # reply 5
        (M.Twalk(4, 0, 8, []), M.Rwalk),                                          # ring 0
        (M.Tcreate(9, 8, "f", 0o644, C.ORDWR, ""), M.Rcreate),                    # reply 6
        (M.Twrite(10, 8, 0, b"after"), M.Rwrite),                                 # ring 0
        (M.Twalk(12, 0, 9, ["f"]), M.Rwalk),                                      # ring 0
        (M.Twstat(11, 9, STAT_DONT_TOUCH._replace(name="g", mode=0o600)), M.Rwstat),  # reply 7
        (M.Tstat(13, 9), M.Rstat),                                                # reply 8
        (M.Twalk(14, 0, 10, ["g"]), M.Rwalk),                                     # ring 0
        (M.Topen(16, 10, C.OREAD | C.ORCLOSE), M.Ropen),                          # ring 0
        (M.Tread(18, 10, 0, 100), M.Rread),                                       # ring 0
        (M.Tclunk(15, 10), M.Rclunk),                                             # reply 9
        (M.Tclunk(20, 8), M.Rclunk),                                              # ring 0
    ]
    got, died_on = d.steps_through_a_crash(steps, f"{point}/{op}")
    assert died_on is not None, "the fault never fired"
    d.guest.poll(0.05)
    assert len(d.guest.replies) == len(steps)  # exactly once each
    assert got[13].stat.name == "g" and got[13].stat.mode == 0o600 and got[13].stat.length == 5
    assert bytes(got[18].data) == b"after"
    assert os.listdir(d.export) == []  # d removed, f renamed to g, g removed at its ORCLOSE clunk
    assert d.stop() == {0: 0, 1: 0}
    assert d.ds.ring_counters(1)["resumed_total"] == 1
