"""xen9pctl, the operator CLI: asks xen9pd over its zmq control socket and prints tables (or --json).

Exit codes: 0 ok, 1 the daemon refused the command, 2 usage, 69 xen9pd not running or not answering.
The subcommands, their arguments, help and output come from the command table (commands.py).
"""
from __future__ import annotations

import argparse
import os

import zmq

from xen9p_common import control
from xen9p_common.version import version

from .command import CHANGE_TIMEOUT, QUERY_TIMEOUT, CommandTable, Unavailable
from .commands import TABLE
from .control_server import ipc_path


class Client:
    """One request, one reply over a fresh DEALER; Unavailable when nobody answers within `timeout`."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.ctx = zmq.Context.instance()

    def call(self, cmd: str, args: dict | None = None) -> dict:
        path = ipc_path(self.endpoint)
        if path is not None and not os.path.exists(path):
            raise Unavailable(f"xen9pd is not running (no control socket at {path})")
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.connect(self.endpoint)
            req = control.request(cmd, args)
            s.send(control.dumps(req))
            if not s.poll(int(self.timeout * 1000)):
                raise Unavailable(f"xen9pd is not answering on {self.endpoint} (waited {self.timeout:g}s)")
            return control.loads(s.recv())
        except zmq.ZMQError as e:
            raise Unavailable(f"cannot reach xen9pd on {self.endpoint}: {e}") from None
        finally:
            s.close(0)


def build_parser(table: CommandTable = TABLE) -> argparse.ArgumentParser:
    return table.build_parser(version())


def main(argv: list[str] | None = None, table: CommandTable = TABLE) -> int:
    ap = build_parser(table)
    try:
        ns = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    cmd = table[ns.cmd]
    timeout = ns.timeout
    if timeout is None:
        timeout = CHANGE_TIMEOUT if cmd.changes_state else QUERY_TIMEOUT
    return cmd.run(Client(ns.control, timeout), ns)


if __name__ == "__main__":
    raise SystemExit(main())
