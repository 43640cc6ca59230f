"""Guest workloads over the 9P client (smoke, fsstress, copy, untar, readdir, locks) for the simulated guest.

Each runs in its own directory under the mount root, checks what it reads against what it wrote, and returns a Summary.
"""
from __future__ import annotations

import errno
import random
import time

from xen9p_sim.client import Fid, P9Error
from xen9p_common.errors import Xen9pError

# The families live in workloads_files, workloads_fsstress and workloads_trees; the shared kit in workloads_kit.
from xen9p_sim.workloads.fsstress import fsstress
from xen9p_sim.workloads.kit import Check, Progress, Summary, WorkloadFn
from xen9p_sim.workloads.files import copy, locks, smoke
from xen9p_sim.workloads.trees import make_source_tarball, readdir, untar
from xen9p_sim.workloads.unikraft import unikraft

__all__ = ["WORKLOADS", "Check", "Progress", "Summary", "WorkloadFn", "copy", "fsstress", "locks",
           "make_source_tarball", "readdir", "run_workload", "smoke", "unikraft", "untar"]

WORKLOADS: dict[str, WorkloadFn] = {
    "smoke": smoke, "fsstress": fsstress, "copy": copy, "untar": untar, "readdir": readdir, "locks": locks,
    "unikraft": unikraft,  # Unikraft's own habits (legacy Tcreate/Tremove, full-ring replies); any .L mount
}


def run_workload(name: str, root: Fid, *, seed: int = 1, scale: int = 1,
                 progress: Progress | None = None, workdir: str | None = None) -> Summary:
    """Run one workload in a fresh directory under `root`; failures are counted, never raised."""
    fn = WORKLOADS.get(name)
    if fn is None:
        raise ValueError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")
    p = progress or Progress()
    summary = Summary(name)
    check = Check(p, summary.details)
    rnd = random.Random(f"{name}-{seed}")
    ops0, bytes0, err0 = p.ops, p.bytes, p.errors
    workdir = workdir or f"wl-{name}-{seed}"
    t0 = time.monotonic()
    try:
        try:
            root.mkdir(workdir, 0o755)
        except P9Error as e:
            if e.errno != errno.EEXIST:
                raise
        with root.walk([workdir]) as d:
            fn(d, rnd, max(1, scale), p, check)
        root.rmdir(workdir)
    except (Xen9pError, OSError) as e:
        check(False, f"{name}: {type(e).__name__}: {e}")
    summary.seconds = time.monotonic() - t0
    summary.ops, summary.bytes, summary.errors = p.ops - ops0, p.bytes - bytes0, p.errors - err0
    return summary
