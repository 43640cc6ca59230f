"""xen9pctl, the operator CLI: asks xen9pd over its zmq control socket and prints tables (or --json).

Exit codes: 0 ok, 1 the daemon refused the command, 2 usage, 69 xen9pd not running or not answering.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import zmq

from xen9p_common import control
from xen9p_common.version import version

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 69


class Unavailable(Exception):
    pass


class Client:
    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.ctx = zmq.Context.instance()

    def call(self, cmd: str, args: dict | None = None) -> dict:
        path = self.endpoint[len("ipc://"):] if self.endpoint.startswith("ipc://") else None
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


def _fmt_uptime(s: float | None) -> str:
    """'-' only when there is no uptime (device not connected, ring not running); seconds count from 0."""
    if s is None or s < 0:
        return "-"
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[("-" if c is None or c == "" else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def status_table(st: dict) -> str:
    d = st["daemon"]
    head = (f"xen9pd pid {d['pid']} {d['version']} on {d['platform']} (dom{d['self_domid']}), "
            f"up {_fmt_uptime(d['uptime'])}, kinds {','.join(d['kinds'])}, "
            f"{d['devices']} device(s), {d['rings']} ring(s)")
    if d.get("xenstore") == "reconnecting":
        head += ", XENSTORE LOST: reconnecting (rings serve on)"
    rows = []
    for dev in st["devices"]:
        workers = " ".join(f"{r['pid'] or '-'}@{r['cpu'] if r['cpu'] is not None else '-'}" for r in dev["rings"])
        rows.append([dev["name"], dev["kind"], dev["tag"], dev["path"], dev["state"], len(dev["rings"]), workers,
                     _fmt_uptime(dev["uptime"]), dev["restarts"], f"{dev.get('requests_per_s', 0):.0f}",
                     f"{dev.get('mb_per_s', 0):.2f}"])
    body = table(rows, ["DEVICE", "KIND", "TAG", "PATH", "STATE", "RINGS", "PID@CPU", "UPTIME", "RESTARTS",
                        "REQ/S", "MB/S"])
    errs = [f"  {dev['name']}: {dev['error']}" for dev in st["devices"] if dev.get("error")]
    return "\n".join([head, body] + (["errors:"] + errs if errs else []))


def devices_table(devs: list[dict]) -> str:
    return table([[d["name"], d["kind"], d["tag"], d["path"], "ro" if d.get("readonly") else "rw",
                   d["security_model"], d["state"], d["backend_state"],
                   d["num_rings"], _fmt_uptime(d["uptime"]), d["restarts"]] for d in devs],
                 ["DEVICE", "KIND", "TAG", "PATH", "ACCESS", "MODEL", "STATE", "BACKEND", "RINGS", "UPTIME",
                  "RESTARTS"])


def rings_table(rings: list[dict]) -> str:
    return table([[r["name"], r["pid"], r["cpu"], r["state"], _fmt_uptime(r["uptime"]), r["restarts"],
                   "/".join(str(r["exits"][k]) for k in ("requested", "crash", "timeout")),
                   f"{r.get('requests_per_s', 0):.0f}", f"{r.get('mb_per_s', 0):.2f}"] for r in rings],
                 ["RING", "PID", "CPU", "STATE", "UPTIME", "RESTARTS", "EXITS(req/crash/timeout)", "REQ/S", "MB/S"])


def metrics_text(m: dict) -> str:
    lines = []
    for scope in ("daemon",):
        for k, v in sorted(m.get(scope, {}).items()):
            lines.append(f"daemon {k} {v}")
    for scope in ("devices", "rings"):
        for name, vals in sorted(m.get(scope, {}).items()):
            for k, v in sorted(vals.items()):
                lines.append(f"{name} {k} {v}")
    return "\n".join(lines)


# Queries answer at once, so a dead daemon is reported within 2 s; commands that change
# xenstore or processes may take longer on a loaded (or emulated) dom0.
QUERY_TIMEOUT = 1.5
CHANGE_TIMEOUT = 30.0
CHANGING_COMMANDS = ("attach", "detach", "restart-ring", "reload")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xen9pctl", description="Query and steer a running xen9pd.",
                                 epilog="Exit codes: 0 ok, 1 refused, 2 usage, 69 xen9pd not running.")
    ap.add_argument("--version", action="version", version=f"xen9pctl {version()}")
    ap.add_argument("--control", default=os.environ.get("XEN9PD_CONTROL", control.DEFAULT_CONTROL),
                    help=f"xen9pd control endpoint (default {control.DEFAULT_CONTROL}; env XEN9PD_CONTROL)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--timeout", type=float, default=None,
                    help=f"seconds to wait for an answer (default {QUERY_TIMEOUT:g}; "
                         f"{CHANGE_TIMEOUT:g} for {', '.join(CHANGING_COMMANDS)})")
    # --json is accepted before or after the command ("xen9pctl status --json"); SUPPRESS keeps a
    # subcommand that lacks it from resetting the global flag.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add = sub.add_parser
    sub.add_parser = lambda *a, **kw: _add(*a, parents=[common], **kw)  # type: ignore[method-assign]
    sub.add_parser("ping", help="is xen9pd alive?")
    sub.add_parser("status", help="daemon, devices and ring workers (pids, cores, uptime, restarts, rates)")
    sub.add_parser("devices", help="one line per device")
    sub.add_parser("rings", help="one line per ring worker")
    p = sub.add_parser("metrics", help="aggregated metrics")
    p.add_argument("--watch", action="store_true", help="repeat every --interval seconds")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--count", type=int, default=0, help="with --watch: stop after N rounds (0 = forever)")
    p = sub.add_parser("top", help="live status view (Ctrl-C to quit)")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--count", type=int, default=0, help="stop after N refreshes (0 = forever)")
    p = sub.add_parser("detach", help="close a device: detach domN/devM")
    p.add_argument("device")
    p = sub.add_parser("restart-ring", help="restart one ring worker: restart-ring domN/devM/ringK")
    p.add_argument("ring")
    p = sub.add_parser("log-level", help="set the daemon's log level")
    p.add_argument("level", choices=["debug", "info", "warning", "error"])
    sub.add_parser("reload", help="re-read the configuration")
    p = sub.add_parser("upgrade", help="move ring workers started by a previous xen9pd onto the installed code, "
                                       "one ring at a time (guests keep working)")
    p.add_argument("--all", action="store_true", help="replace every ring's worker, not only adopted ones")
    p.add_argument("--ring-timeout", type=float, default=60.0,
                   help="seconds one ring may take to serve again before the upgrade stops (default 60)")
    p = sub.add_parser("attach", help="write a 9pfs device's xenstore nodes like libxl (running or paused domU)")
    p.add_argument("--domid", type=int, required=True)
    p.add_argument("--devid", type=int, default=0)
    p.add_argument("--kind", choices=["xen_9pfs", "9pfs"], default="xen_9pfs")
    p.add_argument("--path", required=True, help="host directory to export")
    p.add_argument("--tag", required=True, help="mount tag the guest uses")
    p.add_argument("--security-model", default="none")
    for k in ("max-files", "max-open-files", "max-space"):
        p.add_argument("--" + k, type=int)
    p.add_argument("--auto-delete", action="store_true")
    return ap


def _request(cmd: str, ns: argparse.Namespace) -> tuple[str, dict]:
    if cmd == "detach":
        return cmd, {"device": ns.device}
    if cmd == "restart-ring":
        return cmd, {"ring": ns.ring}
    if cmd == "log-level":
        return cmd, {"level": ns.level}
    if cmd == "attach":
        limits = {k: getattr(ns, k.replace("-", "_")) for k in ("max-files", "max-open-files", "max-space")
                  if getattr(ns, k.replace("-", "_")) is not None}
        if ns.auto_delete:
            limits["auto-delete"] = 1
        return cmd, {"domid": ns.domid, "devid": ns.devid, "kind": ns.kind, "path": os.path.abspath(ns.path),
                     "tag": ns.tag, "security_model": ns.security_model, "limits": limits}
    if cmd == "top":
        return "status", {}
    return cmd, {}


def _upgrade(client: "Client", ns: argparse.Namespace) -> int:
    from .rolling_upgrade import UpgradeFailed, plan, upgrade
    try:
        client.timeout = max(client.timeout, CHANGE_TIMEOUT)
        status = client.call("status", {})
        rings = plan(status.get("result") or {}, ns.all)
        if not rings:
            print("xen9pctl: upgrade: no ring to replace (every worker runs this daemon's code; --all to force)")
            return EXIT_OK
        n = upgrade(client.call, rings, ns.ring_timeout, sys.stdout)
    except Unavailable as e:
        print(f"xen9pctl: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except UpgradeFailed as e:
        print(f"xen9pctl: upgrade stopped: {e}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"xen9pctl: upgrade: {n} ring worker(s) replaced")
    return EXIT_OK


def _render(cmd: str, result: Any) -> str:
    if cmd in ("status", "top"):
        return status_table(result)
    if cmd == "devices":
        return devices_table(result)
    if cmd == "rings":
        return rings_table(result)
    if cmd == "metrics":
        return metrics_text(result)
    if isinstance(result, dict):
        return " ".join(f"{k}={v}" for k, v in result.items())
    return str(result)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    try:
        ns = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    timeout = ns.timeout
    if timeout is None:
        timeout = CHANGE_TIMEOUT if ns.cmd in CHANGING_COMMANDS else QUERY_TIMEOUT
    client = Client(ns.control, timeout)
    if ns.cmd == "upgrade":
        return _upgrade(client, ns)
    cmd, args = _request(ns.cmd, ns)
    repeat = ns.cmd == "top" or (ns.cmd == "metrics" and ns.watch)
    rounds = 0
    try:
        while True:
            try:
                reply = client.call(cmd, args)
            except Unavailable as e:
                print(f"xen9pctl: {e}", file=sys.stderr)
                return EXIT_UNAVAILABLE
            except control.ControlError as e:
                print(f"xen9pctl: bad reply from xen9pd: {e}", file=sys.stderr)
                return EXIT_REFUSED
            if not reply.get("ok"):
                err = reply.get("error") or {}
                print(f"xen9pctl: {ns.cmd} refused: {err.get('message', err)}", file=sys.stderr)
                return EXIT_REFUSED
            result = reply.get("result")
            if ns.json:
                print(json.dumps(result, indent=None if repeat else 2, sort_keys=True), flush=True)
            else:
                if ns.cmd == "top" and sys.stdout.isatty():
                    sys.stdout.write("\x1b[H\x1b[2J")
                print(_render(ns.cmd, result), flush=True)
            rounds += 1
            if not repeat or (ns.count and rounds >= ns.count):
                return EXIT_OK
            time.sleep(ns.interval)  # the refresh period of a live view
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
