"""A simulated guest for xen9psim: mount a tag over a sim frontend (Linux, Mini-OS or Unikraft), run workloads.

run_guest() returns the summary dict (sim_report.guest_report prints it).
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Sequence

from xen9p_common.errors import Xen9pError


FRONTENDS = ("linux", "minios", "unikraft")
MINIOS_WORKLOADS = ("minios",)  # a Mini-OS guest speaks 9P2000.u: only its own workload fits


def run_guest(sim_dir: str, domid: int, tag: str, workloads: Sequence[str], *, seed: int = 1, scale: int = 1,
              msize: int | None = None, timeout: float = 10.0, progress=None, on_mounted=None,
              frontend: str = "linux", rounds: int = 1, stop: threading.Event | None = None) -> dict:
    """Mount (handshake + Tversion + Tattach), run the workloads in turn `rounds` times (0: until `stop` is
    set; a set `stop` also ends a counted run), unmount; a summary dict. Each round uses fresh seeds, so it
    works in fresh directories. `stop` is looked at between workloads: the one running finishes.

    `frontend` picks the guest kernel: Linux's trans_xen, Mini-OS's 9pfront (9P2000.u, one ring, a live
    update in its workload) or Unikraft's 9pfront (msize = the whole ring).
    """
    from xen9p_sim.workloads import Progress

    progress = progress or Progress()
    out: dict = {"domid": domid, "tag": tag, "frontend": frontend, "workloads": [], "ops": 0, "bytes": 0,
                 "seconds": 0.0, "errors": 0, "requests": 0}
    t0 = time.monotonic()
    steps = _steps(rounds, len(workloads), stop or threading.Event())
    if frontend == "minios":
        _run_minios(sim_dir, domid, tag, workloads, seed, scale, timeout, progress, on_mounted, out, steps)
    else:
        _run_dotl(sim_dir, domid, tag, workloads, seed, scale, msize, timeout, progress, on_mounted, out, frontend,
                  steps)
    out["seconds"] = round(time.monotonic() - t0, 3)
    for w in out["workloads"]:
        out["ops"] += w["ops"]
        out["bytes"] += w["bytes"]
        out["errors"] += w["errors"]
    secs = sum(w["seconds"] for w in out["workloads"])
    out["mb_per_s"] = round(out["bytes"] / (1 << 20) / secs, 2) if secs else 0.0
    return out


def _steps(rounds: int, n: int, stop: threading.Event):
    """(round, workload index) pairs: `rounds` rounds of n workloads (0: without end), until stop is set."""
    for r in (itertools.count() if rounds == 0 else range(rounds)):
        for i in range(n):
            if stop.is_set():
                return
            yield r, i


def _run_dotl(sim_dir, domid, tag, workloads, seed, scale, msize, timeout, progress, on_mounted, out,
              frontend, steps) -> None:
    from xen9p_sim.frontend.linux import LINUX_DEFAULT_MSIZE, SimFrontend, mount
    from xen9p_sim.frontend.unikraft import UnikraftFrontend, unikraft_mount
    from xen9p_sim.workloads import run_workload

    cls = UnikraftFrontend if frontend == "unikraft" else SimFrontend
    with cls(sim_dir, domid, tag, timeout=timeout) as fe:
        if frontend == "unikraft":
            client, root = unikraft_mount(fe)
        else:
            client, root = mount(fe, msize=msize or LINUX_DEFAULT_MSIZE)
        out.update(msize=client.msize, rings=len(fe.rings), ring_order=fe.order, devid=fe.devid,
                   version=client.version_string)
        if on_mounted:
            on_mounted(out)
        try:
            for r, i in steps:
                s = run_workload(workloads[i], root, seed=seed + r * len(workloads) + i, scale=scale,
                                 progress=progress)
                out["workloads"].append(s.as_dict())
        finally:
            out["requests"] = fe.transport.requests if fe.transport else 0
            try:
                root.clunk()
            except Xen9pError:
                pass
            client.close()


def _run_minios(sim_dir, domid, tag, workloads, seed, scale, timeout, progress, on_mounted, out, steps) -> None:
    from xen9p_sim.frontend.minios import MiniOSFrontend
    from xen9p_sim.frontend.minios_session import VERSION, MiniOSSession
    from xen9p_sim.workloads.minios import minios

    with MiniOSFrontend(sim_dir, domid, tag, timeout=timeout) as fe:
        transport = fe.connect()
        session = MiniOSSession(transport, name=f"minios-{fe.name}")
        try:
            session.version(transport.maxsize)
            session.attach()
            out.update(msize=session.msize, rings=len(fe.rings), ring_order=fe.order, devid=fe.devid,
                       version=VERSION)
            if on_mounted:
                on_mounted(out)
            for r, i in steps:
                s, session = minios(fe, session, seed=seed + r * len(workloads) + i, scale=scale,
                                    progress=progress)
                out["workloads"].append(s.as_dict())
            out["live_updates"] = fe.live_updates
        finally:
            out["requests"] = fe.transport.requests if fe.transport else 0
            session.close()
        fe.disconnect()  # Mini-OS's shutdown: FrontendError unless the backend answers Closing first
