"""A simulated guest for xen9psim: mount a tag over the sim frontend, run workloads, unmount, summarise.

rounds=0 repeats the workloads until the process is stopped (the demo's --until-interrupted).

run_guest() returns the summary dict (sim_report.guest_report prints it).
"""
from __future__ import annotations

import itertools
import time
from typing import Sequence

from xen9p_common.errors import Xen9pError


def run_guest(sim_dir: str, domid: int, tag: str, workloads: Sequence[str], *, seed: int = 1, scale: int = 1,
              msize: int | None = None, timeout: float = 10.0, progress=None, on_mounted=None,
              rounds: int = 1) -> dict:
    """Mount (handshake + Tversion + Tattach), run the workloads in turn `rounds` times (0: forever), unmount;
    a summary dict. Each round uses fresh seeds, so it works in fresh directories."""
    from xen9p_common.platform.sim.frontend import LINUX_DEFAULT_MSIZE, SimFrontend, mount
    from xen9p_common.platform.sim.workloads import Progress, run_workload

    progress = progress or Progress()
    out: dict = {"domid": domid, "tag": tag, "workloads": [], "ops": 0, "bytes": 0, "seconds": 0.0,
                 "errors": 0, "requests": 0}
    t0 = time.monotonic()
    with SimFrontend(sim_dir, domid, tag, timeout=timeout) as fe:
        client, root = mount(fe, msize=msize or LINUX_DEFAULT_MSIZE)
        out.update(msize=client.msize, rings=len(fe.rings), ring_order=fe.order, devid=fe.devid)
        if on_mounted:
            on_mounted(out)
        try:
            for r in (itertools.count() if rounds == 0 else range(rounds)):
                for i, name in enumerate(workloads):
                    s = run_workload(name, root, seed=seed + r * len(workloads) + i, scale=scale,
                                     progress=progress)
                    out["workloads"].append(s.as_dict())
        finally:
            out["requests"] = fe.transport.requests if fe.transport else 0
            try:
                root.clunk()
            except Xen9pError:
                pass
            client.close()
    out["seconds"] = round(time.monotonic() - t0, 3)
    for w in out["workloads"]:
        out["ops"] += w["ops"]
        out["bytes"] += w["bytes"]
        out["errors"] += w["errors"]
    secs = sum(w["seconds"] for w in out["workloads"])
    out["mb_per_s"] = round(out["bytes"] / (1 << 20) / secs, 2) if secs else 0.0
    return out
