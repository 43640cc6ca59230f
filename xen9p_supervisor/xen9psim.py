"""`xen9psim`: the simulated Xen toolstack and guest (xenstored, attach, detach, guest, demo).

Everything runs on one machine: a sim directory holds the xenstored socket, guest memory and event channels.
Exit codes: 0 ok, 1 error (or workload errors), 2 usage, 69 xenstore or daemon unreachable.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Sequence

from xen9p_common.errors import Xen9pError, XenStoreError
from xen9p_common.platform import Perm, XenStore

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 69
SECURITY_MODELS = ("none", "passthrough", "mapped-xattr", "mapped-file", "mapped")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("xen9p")
    except Exception:  # noqa: BLE001 - not installed: running from a checkout
        return "0.1.0"


# -- toolstack pieces -----------------------------------------------------------------

def create_domain(xs: XenStore, domid: int, name: str | None = None) -> None:
    """What domain creation leaves behind: XS_INTRODUCE and libxl's domain nodes.

    libxl makes /local/domain/<domid> and its device/ dir owned by dom0 and readable by the
    guest, so a guest can list its own devices but not create siblings.
    """
    introduced = getattr(xs, "is_domain_introduced", None)
    if introduced is None or not introduced(domid):
        xs.introduce_domain(domid)  # type: ignore[attr-defined]
    dom = f"/local/domain/{domid}"
    ro = [Perm("n", 0), Perm("r", domid)]

    def tx(t) -> None:
        for path in (dom, dom + "/device"):
            if t.read(path) is None:
                t.mkdir(path)
            t.set_perms(path, ro)
        if t.read(dom + "/name") is None:
            t.write(dom + "/name", name or f"guest{domid}")
            t.write(dom + "/domid", str(domid))

    xs.transaction(tx)


def destroy_domain(xs: XenStore, domid: int) -> None:
    """What `xl destroy` does to xenstore: the domain's nodes go, xenstored releases it."""
    try:
        xs.rm(f"/local/domain/{domid}")
    except XenStoreError:
        pass
    try:
        xs.release_domain(domid)  # type: ignore[attr-defined]
    except XenStoreError:
        pass


def sim_dir_from(args: argparse.Namespace) -> str:
    d = args.sim_dir or os.environ.get("XEN9P_SIM_DIR")
    if not d:
        raise UsageError("needs --sim-dir or XEN9P_SIM_DIR")
    return os.path.abspath(d)


class UsageError(Xen9pError):
    """A command line that cannot be acted on."""


def dom0_client(sim_dir: str, timeout: float = 10.0) -> XenStore:
    from xen9p_common.platform.sim import sim_paths
    from xen9p_common.platform.xswire import XsWireClient
    return XsWireClient(sim_paths(sim_dir)["xenstored"], timeout=timeout)


def attach_device(xs: XenStore, *, domid: int, path: str, tag: str, kind: str = "xen_9pfs",
                  devid: int = 0, security_model: str = "none", limits: dict | None = None,
                  wait: float = 10.0) -> tuple[str, str]:
    """create_domain + libxl's device nodes; waits (like libxl) for the backend to reach InitWait."""
    from xen9p_common.xenbus import XenbusState

    from . import toolstack
    create_domain(xs, domid)
    be, fe = toolstack.attach(xs, domid=domid, devid=devid, kind=kind, path=path, tag=tag,
                              security_model=security_model, limits=limits)
    if wait > 0:
        st = toolstack.wait_state(xs, be + "/state",
                                  {XenbusState.InitWait, XenbusState.Connected}, wait)
        if st is None:
            raise Xen9pError(f"dom{domid}/dev{devid}: backend did not reach InitWait within {wait} s "
                             f"(is xen9pd running and serving kind {kind}?)")
    return be, fe


# -- commands -------------------------------------------------------------------------

def cmd_xenstored(args: argparse.Namespace) -> int:
    from xen9p_common.platform.sim import xenstored
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
    from . import toolstack
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


def run_guest(sim_dir: str, domid: int, tag: str, workloads: Sequence[str], *, seed: int = 1, scale: int = 1,
              msize: int | None = None, timeout: float = 10.0, progress=None, on_mounted=None) -> dict:
    """Mount (handshake + Tversion + Tattach), run the workloads in turn, unmount; a summary dict."""
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
            for i, name in enumerate(workloads):
                s = run_workload(name, root, seed=seed + i, scale=scale, progress=progress)
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


def cmd_guest(args: argparse.Namespace) -> int:
    from xen9p_common.platform.sim.workloads import WORKLOADS, Progress
    sim_dir = sim_dir_from(args)
    names = [w for w in args.workload.split(",") if w]
    bad = [w for w in names if w not in WORKLOADS]
    if not names or bad:
        raise UsageError(f"unknown workload {', '.join(bad) or '(none)'} (known: {', '.join(WORKLOADS)})")
    progress = Progress()
    stop = threading.Event()

    def report() -> None:
        # Machine-readable progress for `xen9psim demo`, which runs guests as processes.
        while not stop.wait(0.25):
            print(json.dumps({"progress": {"ops": progress.ops, "bytes": progress.bytes,
                                           "errors": progress.errors}}), flush=True)

    def mounted(info: dict) -> None:
        if args.progress:
            print(json.dumps({"mounted": info}), flush=True)

    reporter = threading.Thread(target=report, daemon=True) if args.progress else None
    if reporter:
        reporter.start()
    try:
        summary = run_guest(sim_dir, args.domid, args.tag, names, seed=args.seed, scale=args.scale,
                            msize=args.msize, timeout=args.timeout, progress=progress, on_mounted=mounted)
    finally:
        stop.set()
        if reporter:
            reporter.join()
    if args.json or args.progress:
        print(json.dumps({"summary": summary}), flush=True)
    else:
        print(f"dom{args.domid} tag {args.tag}: msize {summary['msize']}, {summary['rings']} rings "
              f"of order {summary['ring_order']}")
        for w in summary["workloads"]:
            line = (f"  {w['workload']:<9} {w['ops']:>7} ops {w['bytes'] / (1 << 20):>9.1f} MiB "
                    f"{w['seconds']:>7.2f} s {w['mb_per_s']:>8.1f} MB/s {w['errors']:>3} errors")
            print(line)
            for d in w["details"]:
                print(f"    ! {d}")
        print(f"  total: {summary['ops']} ops, {summary['requests']} 9P requests, "
              f"{summary['mb_per_s']} MB/s, {summary['errors']} errors")
    return EXIT_OK if summary["errors"] == 0 else EXIT_ERROR


def cmd_demo(args: argparse.Namespace) -> int:
    from .simdemo import run_demo
    return run_demo(args)


# -- argument parsing -----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--sim-dir", default=None,
                        help="directory of the simulated Xen (default: $XEN9P_SIM_DIR; demo: a fresh temp dir)")
    ap = argparse.ArgumentParser(prog="xen9psim", description=__doc__.splitlines()[0], parents=[common])
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
    p.add_argument("--msize", type=int, default=None, help="requested msize (default Linux's 128 KiB + 24)")
    p.add_argument("--timeout", type=float, default=10.0, help="handshake timeout, seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", type=int, default=1, help="multiply each workload's size")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--progress", action="store_true", help="JSON lines: mounted, progress, summary")
    p.add_argument("action", choices=("run",))
    p.add_argument("workload", help="smoke, fsstress, copy, untar, readdir, locks (comma-separated list)")
    p.set_defaults(fn=cmd_guest)

    p = sub.add_parser("demo", parents=[common], help="xenstored + xen9pd + two guests, end to end")
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the sim dir (and its logs) afterwards")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
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
