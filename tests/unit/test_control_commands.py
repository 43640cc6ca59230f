"""The control command table: every command has a spec, xen9pctl's parser is built from it, and a new
command is one class (seen in the parser, the help and a request to an in-process control server)."""
from __future__ import annotations

import threading

import pytest
import zmq

from xen9p_common import control
from xen9p_supervisor import xen9pctl
from xen9p_supervisor.command import Arg, Command, CommandError, CommandTable
from xen9p_supervisor.commands import TABLE
from xen9p_supervisor.control_server import ControlServer


def _subparsers(ap):
    return next(a for a in ap._actions if a.dest == "cmd").choices


def test_every_command_has_a_spec_and_a_unique_name():
    names = [c.name for c in TABLE]
    assert len(names) == len(set(names))
    for c in TABLE:
        assert c.spec() and c.summary(), c.name
    with pytest.raises(ValueError, match="no docstring"):
        CommandTable([type("NoSpec", (Command,), {"name": "nospec", "__doc__": None})])


def test_the_cli_parser_is_built_from_the_table():
    subs = _subparsers(xen9pctl.build_parser())
    assert list(subs) == [c.name for c in TABLE if c.cli]
    for c in TABLE:
        if not c.cli:
            continue
        assert subs[c.name].description == c.spec()
        dests = {a.dest for a in subs[c.name]._actions} - {"help", "json"}
        assert dests == {a.dest for a in c.args}, c.name
    assert "help" not in subs and TABLE.served("help") is not None
    assert TABLE.served("top") is None and TABLE.served("upgrade") is None  # the CLI does these itself
    help_text = xen9pctl.build_parser().format_help()
    for c in TABLE:
        if c.cli:
            assert c.name in help_text
    assert ", ".join(TABLE.changing()) in help_text


def test_requests_carry_the_declared_arguments(tmp_path):
    ap = xen9pctl.build_parser()
    assert TABLE["detach"].request(ap.parse_args(["detach", "dom1/dev0"])) == ("detach", {"device": "dom1/dev0",
                                                                                          "remove": False})
    assert TABLE["detach"].request(ap.parse_args(["detach", "--remove", "dom1/dev0"]))[1]["remove"] is True
    assert TABLE["top"].request(ap.parse_args(["top"])) == ("status", {})
    assert TABLE["metrics"].request(ap.parse_args(["metrics", "--watch"])) == ("metrics", {})
    ns = ap.parse_args(["attach", "--domid", "3", "--path", str(tmp_path), "--tag", "t", "--max-files", "9",
                        "--auto-delete"])
    assert TABLE["attach"].request(ns) == ("attach", {
        "domid": 3, "devid": 0, "kind": "xen_9pfs", "path": str(tmp_path), "tag": "t", "security_model": "none",
        "limits": {"max-files": 9, "auto-delete": 1}})


def test_a_positional_argument_is_checked_before_execute():
    reply, bug = TABLE.dispatch(None, control.dumps({"v": 1, "id": 5, "cmd": "restart-ring", "args": {"ring": ""}}))
    assert bug is None and reply["error"]["code"] == "bad-args" and "'ring'" in reply["error"]["message"]


class Echo(Command):
    """say something back

    Returns what it was given, upper-cased when asked.
    """
    name = "echo"
    args = (Arg("text", positional=True), Arg("loud", flag=True))

    def execute(self, d, args):
        if args["text"] == "no":
            raise CommandError("refused", "echo will not say no")
        d.heard.append(args["text"])
        return {"said": args["text"].upper() if args.get("loud") else args["text"]}


class FakeDaemon:
    def __init__(self):
        self.heard = []


@pytest.fixture
def served(tmp_path):
    """A test-local table (the real commands + Echo) served in-process on an ipc socket."""
    table = CommandTable([type(c) for c in TABLE] + [Echo])
    endpoint = f"ipc://{tmp_path}/ctl.sock"
    daemon = FakeDaemon()
    ready, stop = threading.Event(), threading.Event()
    ctx = zmq.Context()

    def serve():
        srv = ControlServer(ctx, endpoint, daemon, table)
        ready.set()
        poller = zmq.Poller()
        poller.register(srv.sock, zmq.POLLIN)
        while not stop.is_set():
            if poller.poll(50):
                srv.handle_ready()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(10)
    yield table, endpoint, daemon
    stop.set()
    t.join(10)
    ctx.term()


def test_adding_a_command_is_one_class(served, capsys):
    table, endpoint, daemon = served
    assert "echo" in _subparsers(table.build_parser("x"))
    assert "say something back" in table.build_parser("x").format_help()
    assert xen9pctl.main(["--control", endpoint, "echo", "hi", "--loud"], table) == 0
    assert capsys.readouterr().out == "said=HI\n"
    assert xen9pctl.main(["--control", endpoint, "--json", "echo", "hey"], table) == 0
    assert capsys.readouterr().out == '{\n  "said": "hey"\n}\n'
    assert daemon.heard == ["hi", "hey"]
    assert xen9pctl.main(["--control", endpoint, "echo", "no"], table) == 1
    assert capsys.readouterr().err == "xen9pctl: echo refused: echo will not say no\n"
    reply = xen9pctl.Client(endpoint, 5).call("help")
    assert reply["result"]["echo"] == "say something back\n\nReturns what it was given, upper-cased when asked." and "ping" in reply["result"]
    assert xen9pctl.Client(endpoint, 5).call("top")["error"]["code"] == "unknown-command"
    # the real table does not know it
    assert "echo" not in _subparsers(xen9pctl.build_parser())
    assert xen9pctl.main(["echo", "hi"]) == 2
