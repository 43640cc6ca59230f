"""Command line of the worker: `python -m xen9p_worker --listen ... --export DIR ...`.

Each serving mode is one entry of MODES (today the socket mode; the ring mode
adds its own), so a new mode adds its options and a run function, nothing else.
Exit codes: 0 ok (also after SIGTERM), 1 runtime error, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys

from xen9p_common.exitcodes import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from xen9p_common.p9.messages import MSIZE_CAP
from xen9p_common.version import version

from .backend.local import LocalBackend
from xen9p_common.models import SECURITY_MODELS
from .dispatch import Limits, Server



class UsageError(Exception):
    """A bad argument value found after parsing (exit 2)."""


def add_core_options(p: argparse.ArgumentParser) -> None:
    """Options of the 9P server core, shared by every mode."""
    p.add_argument("--export", required=True, help="host directory to serve")
    p.add_argument("--security-model", required=True, choices=SECURITY_MODELS, help="QEMU security model")
    p.add_argument("--msize-cap", type=int, default=MSIZE_CAP, help="largest msize granted")
    p.add_argument("--threads", type=int, default=8, help="I/O threads per worker")
    p.add_argument("--max-fids", type=int, default=None)
    p.add_argument("--max-open-files", type=int, default=None)
    p.add_argument("--max-space", type=int, default=None, help="MiB the export may hold")
    p.add_argument("--readonly", action="store_true", help="EROFS to every modifying request")
    p.add_argument("--log-level", default="warning",
                   choices=["debug", "info", "warning", "error", "critical"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xen9p_worker",
                                description="Serve a host directory over 9P2000.L or 9P2000.u.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    modes = p.add_mutually_exclusive_group(required=True)
    modes.add_argument("--listen", metavar="unix:PATH|tcp:HOST:PORT|fd:N",
                       help="serve 9P on a socket (each connection its own session)")
    add_core_options(p)
    return p


def raise_fd_limit() -> None:
    """Open fids keep their fds until Tclunk: take the hard RLIMIT_NOFILE, not the 1024 default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def build_server(args) -> Server:
    if not os.path.isdir(args.export):
        raise UsageError(f"--export {args.export!r}: not a directory")
    if args.msize_cap < 4096 + 24:
        raise UsageError("--msize-cap must be at least 4120")
    if args.threads < 1:
        raise UsageError("--threads must be at least 1")
    raise_fd_limit()
    limits = Limits(args.max_fids, args.max_open_files,
                    args.max_space * (1 << 20) if args.max_space is not None else None)
    backend = LocalBackend(args.export, args.security_model, readonly=args.readonly)
    return Server(backend, msize_cap=args.msize_cap, pool_size=args.threads, limits=limits)


def run_listen(args) -> int:
    from .transport_socket import SocketTransport, open_listener, parse_listen

    try:
        kind, addr = parse_listen(args.listen)
    except ValueError as e:
        raise UsageError(str(e)) from None
    server = build_server(args)
    try:
        sock = open_listener(kind, addr)
    except OSError as e:
        logging.getLogger("xen9p").error("cannot listen on %s: %s", args.listen, e)
        return EXIT_ERROR
    transport = SocketTransport(server, sock)
    # The handler only sets a flag and wakes the loop (no logging, no locks).
    signal.signal(signal.SIGTERM, lambda *_: transport.stop())
    signal.signal(signal.SIGINT, lambda *_: transport.stop())
    logging.getLogger("xen9p").info("serving %s on %s (%s)", args.export, args.listen, args.security_model)
    try:
        transport.serve()
    finally:
        server.close()
        if kind == "unix":
            try:
                os.unlink(addr)
            except OSError:
                pass
    return EXIT_OK


# mode attribute on the parsed args -> run function; the ring mode registers here too.
MODES = {"listen": run_listen}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on bad usage
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .memtune import tune_malloc
    tune_malloc()  # before any I/O thread exists
    for attr, run in MODES.items():
        if getattr(args, attr, None) is not None:
            try:
                return run(args)
            except UsageError as e:
                parser.print_usage(sys.stderr)
                print(f"{parser.prog}: error: {e}", file=sys.stderr)
                return EXIT_USAGE
    parser.error("no serving mode given")
    return EXIT_USAGE
