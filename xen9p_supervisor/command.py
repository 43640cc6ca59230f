"""What a control command is, and a table of them: xen9pd dispatches requests from it, xen9pctl builds its parser from it.

One `Command` subclass per command (the model is circus's zmq control): its docstring is the spec (the first
line is xen9pctl's one-line help, the whole text is what `help` answers), `args` declares its arguments once
(they become argparse arguments and the request's JSON fields), `execute` runs in xen9pd, `render` prints the
reply, `changes_state` picks the longer timeout. The concrete commands are in `commands.py`.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from xen9p_common import control
from xen9p_common.control import ControlError
from xen9p_common.exitcodes import EXIT_OK, EXIT_REFUSED, EXIT_UNAVAILABLE

# Queries answer at once, so a dead daemon is reported within 2 s; commands that change
# xenstore or processes may take longer on a loaded (or emulated) dom0.
QUERY_TIMEOUT = 1.5
CHANGE_TIMEOUT = 30.0


class CommandError(ControlError):
    """A command refused or failed; code and message go back to the client."""


class Unavailable(Exception):
    """xen9pd is not running or not answering (exit 69)."""


def fail(message: str, code: int) -> int:
    """xen9pctl's one error line (on stderr), and the exit code to return with it."""
    print(f"xen9pctl: {message}", file=sys.stderr)
    return code


@dataclass(frozen=True)
class Arg:
    """One argument: a positional (a required non-empty string on the wire) or a --flag.

    `wire` arguments travel in the request's `args` under `dest`; the others only steer the CLI.
    """

    name: str
    positional: bool = False
    type: Callable[[str], Any] | None = None
    default: Any = None
    required: bool = False
    choices: tuple | None = None
    flag: bool = False          # a store_true switch
    help: str | None = None
    wire: bool = True

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def add_to(self, p: argparse.ArgumentParser) -> None:
        if self.positional:
            p.add_argument(self.name, choices=self.choices, help=self.help)
        elif self.flag:
            p.add_argument("--" + self.name, action="store_true", help=self.help)
        else:
            kw = {"type": self.type} if self.type else {}
            p.add_argument("--" + self.name, default=self.default, required=self.required, choices=self.choices,
                           help=self.help, **kw)


class Command:
    """Base class; a subclass sets `name` and a docstring and overrides what differs."""

    name = ""
    args: tuple[Arg, ...] = ()
    changes_state = False   # xenstore or processes change: the CLI waits CHANGE_TIMEOUT
    daemon = True           # xen9pd answers it (False: the CLI does it with other commands)
    cli = True              # xen9pctl offers it
    table: "CommandTable"   # the table it was added to (set by CommandTable.add)

    # -- the spec
    @classmethod
    def spec(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def summary(cls) -> str:
        return cls.spec().splitlines()[0] if cls.spec() else ""

    # -- xen9pd's side
    def execute(self, d: Any, args: dict) -> Any:
        """Run in xen9pd against the Supervisor `d`; CommandError refuses."""
        raise NotImplementedError

    def check(self, args: dict) -> dict:
        """Positional arguments are required non-empty strings; the rest is execute's to check."""
        for a in self.args:
            if a.positional and a.wire:
                v = args.get(a.dest)
                if not isinstance(v, str) or not v:
                    raise CommandError("bad-args", f"argument {a.dest!r} (a string) is required")
        return args

    # -- xen9pctl's side
    def request(self, ns: argparse.Namespace) -> tuple[str, dict]:
        """The (command, args) to send for parsed arguments `ns`."""
        return self.name, {a.dest: getattr(ns, a.dest) for a in self.args if a.wire}

    def render(self, result: Any) -> str:
        """The reply as text (without --json)."""
        if isinstance(result, dict):
            return " ".join(f"{k}={v}" for k, v in result.items())
        return str(result)

    def render_json(self, result: Any, repeat: bool) -> str:
        return json.dumps(result, indent=None if repeat else 2, sort_keys=True)

    def repeats(self, ns: argparse.Namespace) -> bool:
        """True for a live view: ask again every ns.interval seconds (ns.count rounds, 0 = forever)."""
        return False

    def before_print(self) -> None:
        """Called before each text reply is printed (a live view clears the screen)."""

    def run(self, client: Any, ns: argparse.Namespace) -> int:
        """xen9pctl's whole run of this command; returns the exit code."""
        cmd, args = self.request(ns)
        repeat = self.repeats(ns)
        rounds = 0
        try:
            while True:
                try:
                    reply = client.call(cmd, args)
                except Unavailable as e:
                    return fail(str(e), EXIT_UNAVAILABLE)
                except ControlError as e:
                    return fail(f"bad reply from xen9pd: {e}", EXIT_REFUSED)
                if not reply.get("ok"):
                    err = reply.get("error") or {}
                    return fail(f"{self.name} refused: {err.get('message', err)}", EXIT_REFUSED)
                result = reply.get("result")
                if ns.json:
                    print(self.render_json(result, repeat), flush=True)
                else:
                    self.before_print()
                    print(self.render(result), flush=True)
                rounds += 1
                if not repeat or (ns.count and rounds >= ns.count):
                    return EXIT_OK
                time.sleep(ns.interval)  # the refresh period of a live view
        except (KeyboardInterrupt, BrokenPipeError):
            return EXIT_OK


class CommandTable:
    """The commands by name, in the order xen9pctl lists them."""

    def __init__(self, commands: Iterable[type[Command]]) -> None:
        self._by_name: dict[str, Command] = {}
        for c in commands:
            self.add(c)

    def add(self, cls: type[Command]) -> type[Command]:
        """Register a command class (usable as a decorator)."""
        if not cls.name or cls.name in self._by_name:
            raise ValueError(f"command {cls.name!r}: a name is required and must be unique")
        if not cls.spec():
            raise ValueError(f"command {cls.name!r} has no docstring (its spec)")
        cmd = cls()
        cmd.table = self
        self._by_name[cls.name] = cmd
        return cls

    def __iter__(self) -> Iterator[Command]:
        return iter(self._by_name.values())

    def __getitem__(self, name: str) -> Command:
        return self._by_name[name]

    def served(self, name: str) -> Command | None:
        """The command xen9pd answers under `name`, or None."""
        c = self._by_name.get(name)
        return c if c is not None and c.daemon else None

    def help(self) -> dict[str, str]:
        return {c.name: c.spec() for c in self if c.daemon}

    def changing(self) -> list[str]:
        return [c.name for c in self if c.changes_state and c.cli]

    def dispatch(self, d: Any, body: bytes) -> tuple[dict, Exception | None]:
        """One raw request -> its reply; an unexpected exception is returned beside the reply for logging."""
        req_id = None
        try:
            req = control.parse_request(body)
            req_id = req["id"]
            cmd = self.served(req["cmd"])
            if cmd is None:
                raise CommandError("unknown-command", f"unknown command {req['cmd'][:40]!r}; try 'help'")
            return control.reply_ok(req_id, cmd.execute(d, cmd.check(req["args"]))), None
        except ControlError as e:
            return control.reply_error(req_id, e.code, str(e)), None
        except Exception as e:  # a bug in one command must not take the daemon down
            return control.reply_error(req_id, "internal", f"{type(e).__name__}: {e}"), e

    def build_parser(self, version: str) -> argparse.ArgumentParser:
        ap = argparse.ArgumentParser(prog="xen9pctl", description="Query and steer a running xen9pd.",
                                     epilog="Exit codes: 0 ok, 1 refused, 2 usage, 69 xen9pd not running.")
        ap.add_argument("--version", action="version", version=f"xen9pctl {version}")
        ap.add_argument("--control", default=os.environ.get("XEN9PD_CONTROL", control.DEFAULT_CONTROL),
                        help=f"xen9pd control endpoint (default {control.DEFAULT_CONTROL}; env XEN9PD_CONTROL)")
        ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
        ap.add_argument("--timeout", type=float, default=None,
                        help=f"seconds to wait for an answer (default {QUERY_TIMEOUT:g}; "
                             f"{CHANGE_TIMEOUT:g} for {', '.join(self.changing())})")
        # --json is accepted before or after the command ("xen9pctl status --json"); SUPPRESS keeps a
        # subcommand that lacks it from resetting the global flag.
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        sub = ap.add_subparsers(dest="cmd", required=True)
        for c in self:
            if c.cli:
                p = sub.add_parser(c.name, help=c.summary(), description=c.spec(), parents=[common],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
                for a in c.args:
                    a.add_to(p)
        return ap
