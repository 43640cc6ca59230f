"""`python -m xen9p_worker ring ...`: compose one ring worker from its command line and run it.

Exit codes: 0 done (also after SIGTERM or a supervisor stop), 1 runtime error, 2 bad arguments,
65 the guest broke the ring protocol (the device must be disconnected; do not restart).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from xen9p_common import control
from xen9p_common.errors import Xen9pError
from xen9p_common.exitcodes import EXIT_ERROR, EXIT_RING, EXIT_USAGE
from xen9p_common.p9.messages import MSIZE_CAP
from xen9p_common.platform import open_platform

from .ring_worker import RingWorker, WorkerExit

log = logging.getLogger("xen9p.ring")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xen9p_worker ring",
                                description="Serve one Xen 9pfs ring of one device.")
    p.add_argument("--platform", choices=("xen", "sim"), required=True)
    p.add_argument("--sim-dir", default=os.environ.get("XEN9P_SIM_DIR"))
    p.add_argument("--domid", type=int, required=True)
    p.add_argument("--devid", type=int, required=True)
    p.add_argument("--ring", type=int, required=True, help="ring index within the device")
    p.add_argument("--ring-ref", type=int, required=True, help="grant ref of the ring's intf page")
    p.add_argument("--evtchn", type=int, required=True, help="the frontend's event channel port")
    p.add_argument("--state", required=True, help="shared-memory name of the device state")
    p.add_argument("--export", required=True)
    p.add_argument("--security-model", required=True)
    p.add_argument("--supervisor", default="", help="zmq endpoint of xen9pd's worker socket ('' = none)")
    p.add_argument("--max-ring-order", type=int, default=9)
    p.add_argument("--threads", type=int, default=8, help="I/O threads")
    p.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    p.add_argument("--spin-us", type=float, default=None,
                   help="after a pass that took requests, poll the ring this many microseconds before "
                        "sleeping on the event channel (0 = never; default $XEN9P_SPIN_US or 30)")
    p.add_argument("--stall-after", type=float, default=30.0,
                   help="seconds a request may stay unanswered (or the loop idle) before the worker "
                        "logs where it is stuck and dumps its threads' stacks (0 = never)")
    p.add_argument("--log-level", default="warning",
                   choices=["debug", "info", "warning", "error", "critical"])
    return p


def _server(args, ds):
    from .backend.local import LocalBackend
    from .dispatch import Limits, Server

    if os.path.realpath(args.export) != os.path.realpath(ds.export or args.export):
        raise WorkerExit(EXIT_USAGE, f"--export {args.export!r} differs from the device state's {ds.export!r}")
    limits = Limits(ds.max_fids, ds.max_open_files or None,
                    ds.max_space_mb * (1 << 20) if ds.max_space_mb else None)
    backend = LocalBackend(args.export, args.security_model, qid_store=ds.qids, readonly=ds.readonly)
    return Server(backend, msize_cap=ds.msize_cap or MSIZE_CAP, pool_size=args.threads, limits=limits,
                  locks=ds.locks, inline_ops=inline_ops(ds.max_files, ds.auto_delete))


def inline_ops(max_files: int, auto_delete: bool) -> frozenset:
    """What a ring worker serves on its loop (dispatch's `inline_ops`).

    Tread may start there: the ring worker's alloc never waits on the loop (BlockingIOError
    sends it to the pool), and t_read serves only page-cached data inline (RWF_NOWAIT).
    Requests that add a name go to the pool when the device counts its names (max-files,
    auto-delete): admitting one may walk the whole export.
    """
    from xen9p_common.p9 import messages as M

    from . import handlers
    ops = handlers.INLINE | {M.Tread}
    if max_files or auto_delete:
        ops -= handlers.ADDS_NAMES
    return frozenset(ops)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.spin_us is None:
        try:
            args.spin_us = float(os.environ.get("XEN9P_SPIN_US", "30"))
        except ValueError:
            print("ring: XEN9P_SPIN_US must be a number of microseconds", file=sys.stderr)
            return EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {control.ring_name(args.domid, args.devid, args.ring)}"
                               f" %(name)s: %(message)s")
    if not 0 <= args.max_ring_order <= 9 or args.threads < 1 or args.stall_after < 0 or args.spin_us < 0:
        print("ring: --max-ring-order must be 0..9, --threads >= 1, --stall-after and --spin-us >= 0", file=sys.stderr)
        return EXIT_USAGE
    from .shared.device_state import DeviceState
    from .memtune import tune_malloc

    tune_malloc()  # before the I/O threads exist: they pick their arenas on first malloc
    ctl = ctx = None
    worker = server = ds = None
    try:
        platform = open_platform(args.platform, args.sim_dir)
        ds = DeviceState.attach(args.state)
        if not 0 <= args.ring < ds.num_rings:
            print(f"ring: --ring {args.ring} outside the device's {ds.num_rings} rings", file=sys.stderr)
            return EXIT_USAGE
        if args.supervisor:
            import zmq
            ctx = zmq.Context()
            ctl = ctx.socket(zmq.DEALER)
            ctl.setsockopt(zmq.IDENTITY, control.ring_name(args.domid, args.devid, args.ring).encode())
            ctl.setsockopt(zmq.LINGER, 1000)
            # The worker outlives its xen9pd: zmq reconnects every 100 ms to whichever xen9pd binds the
            # socket next (which adopts us); what we send while none listens is dropped (send never blocks).
            ctl.setsockopt(zmq.RECONNECT_IVL, 100)
            ctl.setsockopt(zmq.RECONNECT_IVL_MAX, 0)
            ctl.connect(args.supervisor)
        fault = None
        spec = os.environ.get("XEN9P_RING_FAULT", "")  # tests only: "point:n", see RingWorker
        if spec:
            point, _, n = spec.partition(":")
            fault = (point, int(n or 1))
        server = _server(args, ds)
        from .hostlocks import HostLocks
        ds.locks.host = HostLocks(ds.name, ds.segment_fd)  # the guest's locks held on the host too
        session = server.session(fids=ds.fids, locks=ds.locks, state=ds.session)
        worker = RingWorker(domid=args.domid, devid=args.devid, ring=args.ring, ring_ref=args.ring_ref,
                            evtchn_port=args.evtchn, grants=platform.grants(), evtchn=platform.evtchn(),
                            device=ds, session=session, control_sock=ctl,
                            max_ring_order=args.max_ring_order, heartbeat=args.heartbeat, fault=fault,
                            spin_us=args.spin_us)
        worker.hello()
        # Handlers only set a flag and write the wake pipe; the loop does the work.
        signal.signal(signal.SIGTERM, lambda *_: worker.stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: worker.stop("SIGINT"))
        worker.setup()
        if args.stall_after > 0:
            from .watchdog import Watchdog
            dog = Watchdog(worker, stall_after=args.stall_after, period=min(5.0, args.stall_after / 2),
                           clock=worker.clock)
            dog.start()
        prof_dir = os.environ.get("XEN9P_PROFILE_DIR", "")  # development: cProfile the loop thread
        if prof_dir:
            import cProfile
            prof = cProfile.Profile()
            try:
                return prof.runcall(worker.run)
            finally:
                prof.dump_stats(os.path.join(prof_dir, f"ring{args.ring}-{os.getpid()}.prof"))
        return worker.run()
    except WorkerExit as e:
        log.error("%s", e)
        if worker is not None:
            worker.send(control.W_ERROR, reason=str(e), fatal=e.code == EXIT_RING)
        return e.code
    except (Xen9pError, OSError, ValueError) as e:
        log.error("ring worker failed: %s", e)
        if worker is not None:
            worker.send(control.W_ERROR, reason=str(e), fatal=False)
        return EXIT_ERROR
    finally:
        if server is not None:
            server.pool.close(timeout=1.0)  # first: idle I/O threads still hold their last request
        if worker is not None:
            worker.close()
        if ctl is not None:
            ctl.close()
        if ctx is not None:
            ctx.term()
        if ds is not None:
            ds.close()


if __name__ == "__main__":
    sys.exit(main())
