"""`xen9psim`: the simulated Xen toolstack and guest (xenstored, attach, detach, guest, demo).

Everything runs on one machine: a sim directory holds the xenstored socket, guest memory and event channels.
Exit codes: 0 ok, 1 error (or workload errors), 2 usage, 69 xenstore or daemon unreachable.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Sequence

from xen9p_common.errors import Xen9pError, XenStoreError
from xen9p_common.models import SECURITY_MODELS
from xen9p_common.version import version

# The pieces live in sim_toolstack, sim_guest and sim_demo; re-exported because callers import them from here.
from xen9p_sim.guest import FRONTENDS, MINIOS_WORKLOADS, run_guest
from xen9p_sim.report import guest_report
from xen9p_common.exitcodes import EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from xen9p_sim.toolstack import (UsageError, attach_device, create_domain, destroy_domain, dom0_client,
                                 sim_dir_from)

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "SECURITY_MODELS", "UsageError",
           "attach_device", "build_parser", "create_domain", "destroy_domain", "dom0_client", "main",
           "run_guest", "sim_dir_from"]





# -- commands -------------------------------------------------------------------------

def cmd_xenstored(args: argparse.Namespace) -> int:
    from xen9p_sim.xenstore import xenstored
    argv = ["--socket", args.socket] + (["-v"] if args.verbose else [])
    return xenstored.main(argv)


def _limits(args: argparse.Namespace) -> dict:
    out = {}
    for key in ("max_files", "max_open_files", "max_space"):
        v = getattr(args, key)
        if v is not None:
            out[key] = v
    if args.auto_delete:
        out["auto_delete"] = True
    return out


def cmd_attach(args: argparse.Namespace) -> int:
    sim_dir = sim_dir_from(args)
    xs = dom0_client(sim_dir)
    try:
        be, fe = attach_device(xs, domid=args.domid, devid=args.devid, path=os.path.abspath(args.path),
                               tag=args.tag, kind=args.kind, security_model=args.security_model,
                               limits=_limits(args), wait=args.wait)
    finally:
        xs.close()
    print(f"dom{args.domid}/dev{args.devid}: backend {be}")
    print(f"dom{args.domid}/dev{args.devid}: frontend {fe} (tag {args.tag})")
    return EXIT_OK


def cmd_detach(args: argparse.Namespace) -> int:
    from xen9p_supervisor import toolstack
    sim_dir = sim_dir_from(args)
    xs = dom0_client(sim_dir)
    try:
        closed = toolstack.detach(xs, domid=args.domid, devid=args.devid, kind=args.kind, timeout=args.timeout)
    finally:
        xs.close()
    if not closed:
        print(f"dom{args.domid}/dev{args.devid}: backend did not reach Closed within {args.timeout} s; "
              "nodes removed anyway (as libxl does)", file=sys.stderr)
        return EXIT_ERROR
    print(f"dom{args.domid}/dev{args.devid}: detached")
    return EXIT_OK


_EMIT_LOCK = threading.Lock()


def emit(msg: dict) -> None:
    """One JSON line on stdout, whole: the reporter thread and the main thread both write, and print()
    writes the text and its newline separately, so two threads' lines could run together (a reader then
    loses both, as `xen9psim demo` once lost a guest's "mounted" line)."""
    line = json.dumps(msg) + "\n"
    with _EMIT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


def cmd_guest(args: argparse.Namespace) -> int:
    from xen9p_sim.workloads import WORKLOADS, Progress
    sim_dir = sim_dir_from(args)
    names = [w for w in args.workload.split(",") if w]
    known = MINIOS_WORKLOADS if args.frontend == "minios" else tuple(WORKLOADS)
    bad = [w for w in names if w not in known]
    if not names or bad:
        raise UsageError(f"unknown workload {', '.join(bad) or '(none)'} for a {args.frontend} guest "
                         f"(known: {', '.join(known)})")
    progress = Progress()
    stop = threading.Event()

    def report() -> None:
        # Machine-readable progress for `xen9psim demo`, which runs guests as processes.
        while not stop.wait(0.25):
            emit({"progress": {"ops": progress.ops, "bytes": progress.bytes, "errors": progress.errors}})

    def mounted(info: dict) -> None:
        if args.progress:
            emit({"mounted": info})

    reporter = threading.Thread(target=report, daemon=True) if args.progress else None
    if reporter:
        reporter.start()
    # SIGINT ends the run after the workload in progress (the summary is printed as usual); a second
    # SIGINT interrupts at once. SIGTERM keeps its default: the guest ends now (a demo whose parent died
    # sends it, and nobody is left to read a summary).
    finish = threading.Event()

    def stop_after_workload(signum, frame) -> None:
        if finish.is_set():
            raise KeyboardInterrupt
        finish.set()
    old = {signal.SIGINT: signal.signal(signal.SIGINT, stop_after_workload)}
    try:
        summary = run_guest(sim_dir, args.domid, args.tag, names, seed=args.seed, scale=args.scale,
                            msize=args.msize, timeout=args.timeout, progress=progress, on_mounted=mounted,
                            frontend=args.frontend, rounds=args.rounds, stop=finish)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        stop.set()
        if reporter:
            reporter.join()
    if args.json or args.progress:
        emit({"summary": summary})
    else:
        for line in guest_report(args.domid, args.tag, summary):
            print(line)
    return EXIT_OK if summary["errors"] == 0 else EXIT_ERROR


def cmd_demo(args: argparse.Namespace) -> int:
    from xen9p_sim.demo import Demo
    return Demo(args).run()


# -- argument parsing -----------------------------------------------------------------

def _rounds(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (until stopped) or more, not {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    sim_help = "directory of the simulated Xen (default: $XEN9P_SIM_DIR; demo: a fresh temp dir)"
    ap = argparse.ArgumentParser(prog="xen9psim", description=__doc__.splitlines()[0])
    ap.add_argument("--sim-dir", default=None, help=sim_help)
    # Accepted after the command too; SUPPRESS so a subcommand does not reset the value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--sim-dir", default=argparse.SUPPRESS, help=sim_help)
    ap.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("xenstored", parents=[common], help="run the simulated xenstored")
    p.add_argument("--socket", default=None, help="dom0 socket (default: <sim-dir>/xenstored.sock)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_xenstored)

    p = sub.add_parser("attach", parents=[common], help="create a 9pfs device as libxl does")
    p.add_argument("--domid", type=int, required=True)
    p.add_argument("--devid", type=int, default=0)
    p.add_argument("--path", required=True, help="host directory to export")
    p.add_argument("--tag", required=True, help="mount tag the guest sees")
    p.add_argument("--kind", choices=("9pfs", "xen_9pfs"), default="xen_9pfs")
    p.add_argument("--security-model", choices=SECURITY_MODELS, default="none")
    p.add_argument("--max-files", type=int, default=None)
    p.add_argument("--max-open-files", type=int, default=None)
    p.add_argument("--max-space", type=int, default=None, help="MiB")
    p.add_argument("--auto-delete", action="store_true")
    p.add_argument("--wait", type=float, default=10.0,
                   help="seconds to wait for backend InitWait, as libxl does (0: do not wait)")
    p.set_defaults(fn=cmd_attach)

    p = sub.add_parser("detach", parents=[common], help="online=0, state=5, wait for Closed, remove the nodes")
    p.add_argument("--domid", type=int, required=True)
    p.add_argument("--devid", type=int, default=0)
    p.add_argument("--kind", choices=("9pfs", "xen_9pfs"), default="xen_9pfs")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(fn=cmd_detach)

    p = sub.add_parser("guest", parents=[common], help="a simulated guest: mount a tag and run a workload")
    p.add_argument("--domid", type=int, required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--frontend", choices=FRONTENDS, default="linux",
                   help="guest kernel: linux (trans_xen, 9P2000.L), minios (9pfront, 9P2000.u, 1 ring of order 4, "
                        "live update mid-way; workload minios), unikraft (msize = whole ring, Tcreate/Tremove)")
    p.add_argument("--msize", type=int, default=None, help="requested msize (default Linux's 128 KiB + 24)")
    p.add_argument("--timeout", type=float, default=10.0, help="handshake timeout, seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", type=int, default=1, help="multiply each workload's size")
    p.add_argument("--rounds", type=_rounds, default=1,
                   help="run the workload list this many times; 0: until SIGINT, which ends it after the workload "
                        "in progress (default 1)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--progress", action="store_true", help="JSON lines: mounted, progress, summary")
    p.add_argument("action", choices=("run",))
    p.add_argument("workload", help="smoke, fsstress, copy, untar, readdir, locks, unikraft; minios for "
                                    "--frontend minios (comma-separated list)")
    p.set_defaults(fn=cmd_guest)

    p = sub.add_parser("demo", parents=[common],
                       help="xenstored + xen9pd + two Linux-style guests and a Mini-OS-style one")
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the sim dir (and its logs) afterwards")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    p.add_argument("--until-interrupted", action="store_true",
                   help="guests repeat their workloads until Ctrl-C (--timeout still ends it, as a failure)")
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:
        return int(e.code or 0)
    if not getattr(args, "fn", None):
        ap.print_help(sys.stderr)
        return EXIT_USAGE
    if args.cmd == "xenstored" and not args.socket:
        try:
            from xen9p_common.platform.sim import sim_paths
            args.socket = sim_paths(sim_dir_from(args))["xenstored"]
        except UsageError as e:
            print(f"xen9psim xenstored: {e} (or --socket)", file=sys.stderr)
            return EXIT_USAGE
    try:
        return args.fn(args)
    except UsageError as e:
        print(f"xen9psim {args.cmd}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except XenStoreError as e:
        print(f"xen9psim {args.cmd}: xenstore: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Xen9pError as e:
        print(f"xen9psim {args.cmd}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
