"""Every control command, one class each: its spec, arguments, xen9pd's execute, xen9pctl's rendering.

xen9pd serves `TABLE` on its control socket (control_server.py); xen9pctl builds its parser, help and
output from the same table (xen9pctl.py). Adding a command is one class here (and its test):

    @TABLE.add
    class Uptime(Command):
        \"\"\"How long xen9pd has been running, in seconds.\"\"\"
        name = "uptime"

        def execute(self, d, args):
            return {"uptime": round(time.time() - d.started, 3)}

`xen9pctl uptime` then exists, `xen9pctl --help` and the `help` command list it, and xen9pd answers it.
A command with arguments declares them in `args` (`Arg("device", positional=True)`); one that changes
xenstore or processes sets `changes_state = True`; one with its own output overrides `render`.
`execute(d, args)` runs in xen9pd's loop against its Supervisor `d` and must not block.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import zmq

from xen9p_common import control
from xen9p_common.errors import ConfigError, XenStoreError
from xen9p_common.exitcodes import EXIT_OK, EXIT_REFUSED, EXIT_UNAVAILABLE
from xen9p_common.version import version
from xen9p_common.xenbus import Event

from . import config as configmod, toolstack
from .command import CHANGE_TIMEOUT, Arg, Command, CommandError, CommandTable, Unavailable, fail
from .ctl_tables import devices_table, metrics_text, rings_table, status_table

log = logging.getLogger("xen9pd")

TABLE = CommandTable(())


def device_status(d) -> list[dict]:
    """Every device's status with its latest rates, devices and rings in name order."""
    snap = d.metrics.snapshot
    out = []
    for dev in sorted(d.devices(), key=lambda dev: (dev.domid, dev.devid)):
        st = dev.status()
        dm = snap["devices"].get(dev.name, {})
        st["requests_per_s"] = dm.get("requests_per_s", 0.0)
        st["mb_per_s"] = dm.get("mb_per_s", 0.0)
        for r in st["rings"]:
            rm = snap["rings"].get(r["name"], {})
            r["requests_per_s"] = rm.get("requests_per_s", 0.0)
            r["mb_per_s"] = rm.get("mb_per_s", 0.0)
            r["cpu_percent"] = rm.get("cpu_percent", 0.0)
            r["rss_bytes"] = rm.get("rss_bytes", 0)
        out.append(st)
    return out


def find_device(d, name: str):
    for dev in d.devices():
        if dev.name == name:
            return dev
    raise CommandError("no-such-device", f"no device {name!r} (see 'xen9pctl devices')")


@TABLE.add
class Ping(Command):
    """is xen9pd alive? Returns its pid and version."""
    name = "ping"

    def execute(self, d, args):
        return {"pong": True, "pid": os.getpid(), "version": version()}


@TABLE.add
class Status(Command):
    """daemon, devices and ring workers (pids, cores, uptime, restarts, rates)"""
    name = "status"

    def execute(self, d, args):
        devs = device_status(d)
        return {"daemon": {"pid": os.getpid(), "version": version(), "platform": d.platform_name,
                           "self_domid": d.self_domid, "kinds": list(d.cfg.kinds),
                           "uptime": round(time.time() - d.started, 3), "cpus": list(d.cpus.cpus),
                           "devices": len(devs), "rings": sum(len(dv["rings"]) for dv in devs),
                           "log_level": logging.getLevelName(log.level).lower(),
                           "xenstore": "connected" if d.xs.connected else "reconnecting",
                           "xenstore_lost_total": d.xs.lost_total},
                "devices": devs}

    def render(self, result):
        return status_table(result)


@TABLE.add
class Devices(Command):
    """one line per device

    name, kind, tag, path, access, security model, state, backend state, rings, uptime, restarts.
    """
    name = "devices"

    def execute(self, d, args):
        return [{k: v for k, v in dev.items() if k != "rings"} for dev in device_status(d)]

    def render(self, result):
        return devices_table(result)


@TABLE.add
class Rings(Command):
    """one line per ring worker

    name, pid, cpu, state, restarts, uptime, exits (requested/crash/timeout), rates.
    """
    name = "rings"

    def execute(self, d, args):
        return [dict(r, device=dev["name"]) for dev in device_status(d) for r in dev["rings"]]

    def render(self, result):
        return rings_table(result)


@TABLE.add
class Metrics(Command):
    """aggregated metrics

    The latest metrics per ring, per device and for the daemon.
    """
    name = "metrics"
    args = (Arg("watch", flag=True, wire=False, help="repeat every --interval seconds"),
            Arg("interval", type=float, default=1.0, wire=False),
            Arg("count", type=int, default=0, wire=False, help="with --watch: stop after N rounds (0 = forever)"))

    def execute(self, d, args):
        return d.metrics.snapshot

    def request(self, ns):
        return self.name, {}

    def render(self, result):
        return metrics_text(result)

    def repeats(self, ns):
        return ns.watch


@TABLE.add
class Top(Status):
    """live status view (Ctrl-C to quit)"""
    name = "top"
    daemon = False
    args = (Arg("interval", type=float, default=1.0, wire=False),
            Arg("count", type=int, default=0, wire=False, help="stop after N refreshes (0 = forever)"))

    def request(self, ns):
        return "status", {}

    def repeats(self, ns):
        return True

    def before_print(self):
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")


@TABLE.add
class Detach(Command):
    """close a device: detach domN/devM [--remove]

    Stops the device's workers and closes it (backend Closed). With --remove, then removes its
    backend and frontend nodes as libxl does on hot-unplug: the guest's device goes away and the
    same devid can be attached again (`xen9pctl attach`).
    """
    name = "detach"
    args = (Arg("device", positional=True),
            Arg("remove", flag=True, help="also remove the device's xenstore nodes (hot-unplug, as libxl does)"))
    changes_state = True

    def execute(self, d, args):
        dev = find_device(d, args["device"])
        dev.fail_reason = None
        log.info("%s: detach requested by the operator%s", dev.name, " (remove)" if args.get("remove") else "")
        dev.feed(Event.BACKEND_OFFLINE)
        if not args.get("remove"):
            return {"device": dev.name, "state": str(dev.state)}
        # Closed is written (the feed above runs the teardown at once); the frontend's dir goes first
        # so the guest never sees a frontend whose backend vanished. The watch then releases the device.
        for path in (dev.fe, dev.be):
            try:
                d.xs.rm(path)
            except XenStoreError as e:
                raise CommandError("detach-failed", f"{dev.name} closed, but removing {path} failed: {e}") from None
        return {"device": dev.name, "state": str(dev.state), "removed": [dev.fe, dev.be]}


@TABLE.add
class RestartRing(Command):
    """restart one ring worker: restart-ring domN/devM/ringK

    The new worker re-attaches to the ring and carries on.
    """
    name = "restart-ring"
    args = (Arg("ring", positional=True),)
    changes_state = True

    def execute(self, d, args):
        name = args["ring"]
        dev = find_device(d, name.rpartition("/")[0])
        r = dev.rings.by_name(name) if dev.rings else None
        if r is None:
            raise CommandError("no-such-ring", f"no running ring {name!r}")
        log.info("%s: restart requested by the operator", name)
        dev.rings.restart_ring(r, d.send_stop)
        return {"ring": name, "pid": r.pid, "cpu": r.cpu}


@TABLE.add
class LogLevel(Command):
    """set the daemon's log level (its ring workers' too)"""
    name = "log-level"
    args = (Arg("level", positional=True, choices=configmod.LOG_LEVELS),)

    def execute(self, d, args):
        level = args["level"].lower()
        if level not in configmod.LOG_LEVELS:
            raise CommandError("bad-args", f"level must be one of {', '.join(configmod.LOG_LEVELS)}")
        log.setLevel(level.upper())
        msg = control.dumps({"v": control.VERSION, "type": control.S_LOG_LEVEL, "level": level})
        for dev in d.devices():
            for r in (dev.rings.rings if dev.rings else []):
                try:
                    d.workers.send_multipart([r.name.encode(), msg], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
        log.info("log level now %s", level)
        return {"level": level}


# Options a running xen9pd cannot take over: they name its sockets and platform.
RESTART_ONLY = ("platform", "sim_dir", "control", "metrics", "workers", "prometheus")


@TABLE.add
class Reload(Command):
    """re-read the configuration (like SIGHUP)

    Options naming the platform or a socket change only on restart; the reply lists them.
    """
    name = "reload"
    changes_state = True

    def execute(self, d, args):
        if d.reload_config is None:
            raise CommandError("unsupported", "no configuration source to reload from")
        try:
            new = d.reload_config()
        except ConfigError as e:
            log.error("reload refused, keeping the old configuration: bad config: %s", e)
            raise CommandError("bad-config", str(e)) from None
        fixed = [k for k in RESTART_ONLY if getattr(new, k) != getattr(d.cfg, k)]
        if fixed:
            log.warning("reload: %s change only on restart", ", ".join(fixed))
        changed = [o.name for o in configmod.OPTIONS if getattr(new, o.name) != getattr(d.cfg, o.name)
                   and o.name not in fixed]
        d.cfg = configmod.with_changes(new, **{k: getattr(d.cfg, k) for k in fixed})
        d.ctx.cfg = d.cfg
        d.launcher.worker_cmd = d.cfg.worker_cmd
        d.launcher.spin_us = d.cfg.worker_spin_us  # workers started from now on
        d.cpus.set_cpus(d.cfg.usable_cpus())
        log.setLevel(d.cfg.log_level.upper())
        d.discovery.set_kinds(d.cfg.kinds)
        d.discovery.rescan()
        log.info("configuration reloaded (%s)", ", ".join(changed) or "no changes")
        return {"changed": changed, "need_restart": fixed}


@TABLE.add
class Upgrade(Command):
    """move ring workers started by a previous xen9pd onto the installed code, one ring at a time (guests keep working)

    Done by xen9pctl with status and restart-ring; xen9pd has no command of this name.
    """
    name = "upgrade"
    daemon = False
    changes_state = True
    args = (Arg("all", flag=True, wire=False, help="replace every ring's worker, not only adopted ones"),
            Arg("ring-timeout", type=float, default=60.0, wire=False,
                help="seconds one ring may take to serve again before the upgrade stops (default 60)"))

    def run(self, client, ns) -> int:
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
            return fail(str(e), EXIT_UNAVAILABLE)
        except UpgradeFailed as e:
            return fail(f"upgrade stopped: {e}", EXIT_REFUSED)
        print(f"xen9pctl: upgrade: {n} ring worker(s) replaced")
        return EXIT_OK


def _limit_arg(key: str) -> Arg:
    return Arg(key, flag=True, wire=False) if key == "auto-delete" else Arg(key, type=int, wire=False)


@TABLE.add
class Attach(Command):
    """write a 9pfs device's xenstore nodes like libxl (running or paused domU)

    Wire arguments: domid, path, tag; optional devid, kind, security_model, limits (an object).
    """
    name = "attach"
    changes_state = True
    args = (Arg("domid", type=int, required=True),
            Arg("devid", type=int, default=0),
            Arg("kind", choices=("xen_9pfs", "9pfs"), default="xen_9pfs"),
            Arg("path", required=True, help="host directory to export"),
            Arg("tag", required=True, help="mount tag the guest uses"),
            Arg("security-model", default="none"),
            *(_limit_arg(k) for k in toolstack.LIMIT_KEYS))

    def request(self, ns):
        cmd, args = super().request(ns)
        given = {k: getattr(ns, k.replace("-", "_")) for k in toolstack.LIMIT_KEYS}
        limits = {k: int(v) for k, v in given.items() if v is not None and v is not False}
        return cmd, dict(args, path=os.path.abspath(ns.path), limits=limits)

    def execute(self, d, args):
        try:
            domid = int(args["domid"])
            kw = dict(backend_domid=d.self_domid, domid=domid, devid=int(args.get("devid", 0)),
                      kind=str(args.get("kind", "xen_9pfs")), path=str(args["path"]), tag=str(args["tag"]),
                      security_model=str(args.get("security_model", "none")), limits=args.get("limits") or {})
        except (KeyError, TypeError, ValueError) as e:
            raise CommandError("bad-args", f"attach needs domid, path and tag: {e}") from None
        try:
            be, fe = toolstack.attach(d.xs, **kw)
        except (toolstack.ToolstackError, XenStoreError) as e:
            raise CommandError("attach-failed", str(e)) from None
        d.discovery.rescan()
        return {"backend": be, "frontend": fe}


@TABLE.add
class Help(Command):
    """every command with its help text"""
    name = "help"
    cli = False

    def execute(self, d, args):
        return self.table.help()
