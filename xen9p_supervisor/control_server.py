"""The operator control socket: a zmq ROUTER serving versioned JSON requests, one small class per command.

A command's docstring is its help text. Requests are answered in arrival order without ever waiting on a client.
"""
from __future__ import annotations

import logging
import os
import stat
from typing import Any, Protocol

import zmq

from xen9p_common import control
from xen9p_common.control import ControlError

log = logging.getLogger("xen9pd")


class CommandError(ControlError):
    """A command refused or failed; code and message go back to the client."""


class Daemon(Protocol):
    """What commands may ask of xen9pd (implemented by xen9pd.Supervisor)."""

    def status(self) -> dict: ...
    def device_status(self) -> list[dict]: ...
    def metrics_snapshot(self) -> dict: ...
    def detach(self, name: str) -> dict: ...
    def restart_ring(self, name: str) -> dict: ...
    def set_log_level(self, level: str) -> dict: ...
    def reload(self) -> dict: ...
    def attach(self, args: dict) -> dict: ...


def _str_arg(args: dict, key: str) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not v:
        raise CommandError("bad-args", f"argument {key!r} (a string) is required")
    return v


class Command:
    name = ""

    def run(self, d: Daemon, args: dict) -> Any:
        raise NotImplementedError


class Ping(Command):
    """ping: is the daemon alive? Returns its pid and version."""
    name = "ping"

    def run(self, d, args):
        from xen9p_common.version import version
        return {"pong": True, "pid": os.getpid(), "version": version()}


class Status(Command):
    """status: the daemon, every device and every ring (pid, cpu, state, restarts, rates)."""
    name = "status"

    def run(self, d, args):
        return d.status()


class Devices(Command):
    """devices: one entry per device: name, kind, tag, path, state, rings, uptime, restarts."""
    name = "devices"

    def run(self, d, args):
        return [{k: v for k, v in dev.items() if k != "rings"} for dev in d.device_status()]


class Rings(Command):
    """rings: one entry per ring worker: name, pid, cpu, state, restarts, uptime, exits."""
    name = "rings"

    def run(self, d, args):
        return [dict(r, device=dev["name"]) for dev in d.device_status() for r in dev["rings"]]


class Metrics(Command):
    """metrics: the latest aggregated metrics per ring, per device and for the daemon."""
    name = "metrics"

    def run(self, d, args):
        return d.metrics_snapshot()


class Detach(Command):
    """detach device=domN/devM: stop the device's workers and close it (backend Closed)."""
    name = "detach"

    def run(self, d, args):
        return d.detach(_str_arg(args, "device"))


class RestartRing(Command):
    """restart-ring ring=domN/devM/ringK: restart that ring's worker now (it re-attaches and carries on)."""
    name = "restart-ring"

    def run(self, d, args):
        return d.restart_ring(_str_arg(args, "ring"))


class LogLevel(Command):
    """log-level level=debug|info|warning|error: change the daemon's log level."""
    name = "log-level"

    def run(self, d, args):
        return d.set_log_level(_str_arg(args, "level"))


class Reload(Command):
    """reload: re-read the configuration (like SIGHUP)."""
    name = "reload"

    def run(self, d, args):
        return d.reload()


class Attach(Command):
    """attach domid=N path=DIR tag=T [devid kind security_model limits]: write a device's nodes like libxl."""
    name = "attach"

    def run(self, d, args):
        return d.attach(args)


class Help(Command):
    """help: every command with its help text."""
    name = "help"

    def run(self, d, args):
        return {c.name: (c.__doc__ or "").strip() for c in COMMANDS.values()}


COMMANDS: dict[str, Command] = {c.name: c() for c in (Ping, Status, Devices, Rings, Metrics, Detach, RestartRing,
                                                       LogLevel, Reload, Attach, Help)}
assert set(control.COMMANDS) <= set(COMMANDS)


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
    def __init__(self, ctx: zmq.Context, endpoint: str, daemon: Daemon) -> None:
        self.endpoint = endpoint
        self.daemon = daemon
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
        req_id = None
        try:
            req = control.parse_request(body)
            req_id = req["id"]
            cmd = COMMANDS.get(req["cmd"])
            if cmd is None:
                raise CommandError("unknown-command", f"unknown command {req['cmd'][:40]!r}; try 'help'")
            return control.reply_ok(req_id, cmd.run(self.daemon, req["args"]))
        except ControlError as e:
            return control.reply_error(req_id, e.code, str(e))
        except Exception as e:  # a bug in one command must not take the daemon down
            log.exception("control command failed")
            return control.reply_error(req_id, "internal", f"{type(e).__name__}: {e}")

    def close(self) -> None:
        self.sock.close(0)
        path = ipc_path(self.endpoint)
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass
