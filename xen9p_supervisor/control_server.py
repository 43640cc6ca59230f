"""The operator control socket: a zmq ROUTER serving versioned JSON requests from a command table.

The commands themselves are in commands.py (one class each). Requests are answered in arrival order
without ever waiting on a client.
"""
from __future__ import annotations

import logging
import os
import stat
from typing import Any

import zmq

from xen9p_common import control

from .command import CommandTable

log = logging.getLogger("xen9pd")


def ipc_path(endpoint: str) -> str | None:
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


def bind_private(sock: zmq.Socket, endpoint: str) -> None:
    """Bind; an ipc socket file is made mode 0600 (its directory is created 0700 if missing)."""
    path = ipc_path(endpoint)
    if path:
        d = os.path.dirname(path)
        if d and not os.path.isdir(d):
            os.makedirs(d, mode=0o700, exist_ok=True)
        if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from a dead daemon; a live one was refused earlier
        old = os.umask(0o177)
        try:
            sock.bind(endpoint)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
    else:
        sock.bind(endpoint)


class ControlServer:
    def __init__(self, ctx: zmq.Context, endpoint: str, daemon: Any, table: CommandTable) -> None:
        self.endpoint = endpoint
        self.daemon = daemon    # what the commands' execute receives (xen9pd's Supervisor)
        self.table = table
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        bind_private(self.sock, endpoint)

    def handle_ready(self, budget: int = 100) -> int:
        """Answer up to `budget` queued requests without blocking; returns how many were handled."""
        n = 0
        while n < budget:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            if len(frames) < 2:
                continue
            ident, body = frames[0], frames[-1]
            reply = self.dispatch(body)
            try:
                # A client that left or stopped reading loses its reply; nobody else waits for it.
                self.sock.send_multipart([ident] + frames[1:-1] + [control.dumps(reply)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        return n

    def dispatch(self, body: bytes) -> dict:
        reply, bug = self.table.dispatch(self.daemon, body)
        if bug is not None:
            log.error("control command failed", exc_info=bug)
        return reply

    def close(self) -> None:
        self.sock.close(0)
        path = ipc_path(self.endpoint)
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass
