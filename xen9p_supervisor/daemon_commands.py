"""The control commands xen9pd answers (control_server's Daemon side): status, detach, restart, reload...

A mixin for the Supervisor: it reads the daemon's devices, metrics and configuration through `self`.
"""
from __future__ import annotations

import logging
import os
import time

import zmq

from xen9p_common import control
from xen9p_common.errors import ConfigError, XenStoreError
from xen9p_common.version import version
from xen9p_common.xenbus import Event

from . import config as configmod
from .control_server import CommandError
from .device import Device
from .workers import Ring

log = logging.getLogger("xen9pd")


class ControlCommands:
    """What xen9pctl can ask; needs self.cfg, xs, devices(), metrics, discovery, launcher, cpus, ctx, workers."""

    def _send_log_level(self, r: Ring, level: str) -> None:
        try:
            self.workers.send_multipart([r.name.encode(), control.dumps(
                {"v": control.VERSION, "type": control.S_LOG_LEVEL, "level": level})], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def device_status(self) -> list[dict]:
        snap = self.metrics.snapshot
        out = []
        for dev in sorted(self.devices(), key=lambda d: (d.domid, d.devid)):
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

    def status(self) -> dict:
        devs = self.device_status()
        return {"daemon": {"pid": os.getpid(), "version": version(), "platform": self.platform_name,
                           "self_domid": self.self_domid, "kinds": list(self.cfg.kinds),
                           "uptime": round(time.time() - self.started, 3), "cpus": list(self.cpus.cpus),
                           "devices": len(devs), "rings": sum(len(d["rings"]) for d in devs),
                           "log_level": logging.getLevelName(log.level).lower(),
                           "xenstore": "connected" if self.xs.connected else "reconnecting",
                           "xenstore_lost_total": self.xs.lost_total},
                "devices": devs}

    def metrics_snapshot(self) -> dict:
        return self.metrics.snapshot

    def _device(self, name: str) -> Device:
        for dev in self.devices():
            if dev.name == name:
                return dev
        raise CommandError("no-such-device", f"no device {name!r} (see 'xen9pctl devices')")

    def detach(self, name: str) -> dict:
        dev = self._device(name)
        dev.fail_reason = None
        log.info("%s: detach requested by the operator", dev.name)
        dev.feed(Event.BACKEND_OFFLINE)
        return {"device": dev.name, "state": str(dev.state)}

    def restart_ring(self, name: str) -> dict:
        dev = self._device(name.rpartition("/")[0])
        r = dev.rings.by_name(name) if dev.rings else None
        if r is None:
            raise CommandError("no-such-ring", f"no running ring {name!r}")
        log.info("%s: restart requested by the operator", name)
        dev.rings.restart_ring(r, self._send_stop)
        return {"ring": name, "pid": r.pid, "cpu": r.cpu}

    def set_log_level(self, level: str) -> dict:
        level = level.lower()
        if level not in configmod.LOG_LEVELS:
            raise CommandError("bad-args", f"level must be one of {', '.join(configmod.LOG_LEVELS)}")
        log.setLevel(level.upper())
        for dev in self.devices():
            for r in (dev.rings.rings if dev.rings else []):
                self._send_log_level(r, level)
        log.info("log level now %s", level)
        return {"level": level}

    def reload(self) -> dict:
        if self.reload_config is None:
            raise CommandError("unsupported", "no configuration source to reload from")
        try:
            new = self.reload_config()
        except ConfigError as e:
            log.error("reload refused, keeping the old configuration: bad config: %s", e)
            raise CommandError("bad-config", str(e)) from None
        fixed = [k for k in ("platform", "sim_dir", "control", "metrics", "workers", "prometheus")
                 if getattr(new, k) != getattr(self.cfg, k)]
        if fixed:
            log.warning("reload: %s change only on restart", ", ".join(fixed))
        changed = [o.name for o in configmod.OPTIONS if getattr(new, o.name) != getattr(self.cfg, o.name)
                   and o.name not in fixed]
        keep = {k: getattr(self.cfg, k) for k in fixed}
        self.cfg = configmod.with_changes(new, **keep)
        self.ctx.cfg = self.cfg
        self.launcher.worker_cmd = self.cfg.worker_cmd
        self.launcher.spin_us = self.cfg.worker_spin_us  # workers started from now on
        self.cpus.set_cpus(self.cfg.usable_cpus())
        log.setLevel(self.cfg.log_level.upper())
        self.discovery.set_kinds(self.cfg.kinds)
        self.discovery.rescan()
        log.info("configuration reloaded (%s)", ", ".join(changed) or "no changes")
        return {"changed": changed, "need_restart": fixed}

    def attach(self, args: dict) -> dict:
        from . import toolstack
        try:
            domid = int(args["domid"])
            kw = dict(backend_domid=self.self_domid, domid=domid, devid=int(args.get("devid", 0)),
                      kind=str(args.get("kind", "xen_9pfs")), path=str(args["path"]), tag=str(args["tag"]),
                      security_model=str(args.get("security_model", "none")), limits=args.get("limits") or {})
        except (KeyError, TypeError, ValueError) as e:
            raise CommandError("bad-args", f"attach needs domid, path and tag: {e}") from None
        try:
            be, fe = toolstack.attach(self.xs, **kw)
        except (toolstack.ToolstackError, XenStoreError) as e:
            raise CommandError("attach-failed", str(e)) from None
        self.discovery.rescan()
        return {"backend": be, "frontend": fe}


