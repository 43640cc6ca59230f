"""xen9pd, the supervisor daemon: discovery, device FSMs, ring workers, control and metrics, in one loop.

Composition happens in main(); the Supervisor's loop is single-threaded and signal handlers only queue.
"""
from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import time

import zmq

from xen9p_common import control
from xen9p_common.errors import ConfigError, Xen9pError, XenStoreError
from xen9p_common.exitcodes import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE
from xen9p_common.platform import open_platform
from xen9p_common.version import version

from . import config as configmod
from .adopt import Adopter
from .command import CommandError
from .commands import TABLE
from .control_server import ControlServer, bind_private
from .devstate import DeviceStateFactory, make_factory, sweep_stale_segments
from .device import Context, Device
from .discovery import Discovery
from .exit_mode import keep_serving_on_sigterm
from .libxl_node import StartupError, hold_libxl_node, release_libxl_node
from .metrics import Metrics, PrometheusExporter
from .sdnotify import Notifier
from .workers import CpuAllocator, Launcher, Ring
from .xs_reconnect import LOST, ReconnectingXenStore

log = logging.getLogger("xen9pd")

MAX_POLL = 0.5  # seconds; timers are checked at least this often


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("xen9pd: %(levelname)s %(message)s"))
    root = logging.getLogger("xen9pd")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(level.upper())


class Supervisor:
    """The daemon's state and loop. Collaborators come in; nothing here reads argv or the environment."""

    def __init__(self, cfg: configmod.Config, xs: ReconnectingXenStore, self_domid: int, zctx: zmq.Context,
                 state_factory: DeviceStateFactory, notifier: Notifier, reload_config=None,
                 platform_name: str = "xen") -> None:
        self.cfg = cfg
        self.xs = xs
        self.self_domid = self_domid
        self.zctx = zctx
        self.notifier = notifier
        self.reload_config = reload_config
        self.platform_name = platform_name
        self.started = time.time()
        self.stopping = False
        self.keep_serving = False  # exit leaving the workers serving (restart), decided at SIGTERM
        self.shut_down = False
        self.metrics = Metrics()
        self.launcher = Launcher(cfg.worker_cmd, platform_name, cfg.sim_dir, cfg.worker_spin_us)
        self.cpus = CpuAllocator(cfg.usable_cpus())
        self.workers = zctx.socket(zmq.ROUTER)
        self.workers.setsockopt(zmq.LINGER, 0)
        # A restarted worker reuses its ring's identity; hand the identity over to the new connection.
        self.workers.setsockopt(zmq.ROUTER_HANDOVER, 1)
        bind_private(self.workers, cfg.workers)
        self.control = ControlServer(zctx, cfg.control, self, TABLE)
        self.pub = zctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 10000)
        bind_private(self.pub, cfg.metrics)
        self.exporter = PrometheusExporter(self.metrics, cfg.prometheus) if cfg.prometheus else None
        self.state_factory = state_factory
        self.ctx = Context(xs=xs, cfg=cfg, self_domid=self_domid, launcher=self.launcher, cpus=self.cpus,
                           state_factory=state_factory, send_stop=self.send_stop)
        self.discovery = Discovery(xs, self_domid, cfg.kinds, lambda k, d, v: Device(self.ctx, k, d, v))
        self.holding_libxl_node = False
        self.sig_r, self.sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._status_line = ""

    # -- plumbing --------------------------------------------------------------------

    def send_stop(self, r: Ring) -> None:
        try:
            self.workers.send_multipart([r.name.encode(), control.dumps({"v": control.VERSION, "type": control.S_STOP})],
                                        zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # not connected (yet or any more): SIGTERM follows anyway

    def install_signals(self) -> None:
        # The handlers do nothing: the wakeup fd carries the signal numbers into the loop.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, lambda *_: None)
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)

    def hold_libxl_node(self) -> None:
        if "xen_9pfs" in self.cfg.kinds and self.cfg.hold_libxl_node:
            hold_libxl_node(self.xs, self.self_domid)
            self.holding_libxl_node = True

    def release_libxl_node(self) -> None:
        if self.holding_libxl_node:
            release_libxl_node(self.xs, self.self_domid)
            self.holding_libxl_node = False

    # -- the loop ----------------------------------------------------------------------

    def start(self) -> None:
        self.hold_libxl_node()
        # The first scan adopts what a previous xen9pd left serving (adopt.py); then whatever it left
        # that no device took (workers of devices gone meanwhile, their segments) is stopped and freed.
        adopter = self.ctx.adopter = Adopter(self.cfg, self.state_factory)
        try:
            self.discovery.start()
            self.discovery.rescan()
        finally:
            self.ctx.adopter = None
            adopter.stop_leftovers()
        stale = sweep_stale_segments()
        if stale:
            log.info("freed %d device state segment(s) left by a dead xen9pd: %s", len(stale), ", ".join(stale))
        self.notifier.ready(self._status())
        log.info("xen9pd %s ready: platform %s, serving %s, control %s, cpus %s", version(), self.platform_name,
                 ",".join(self.cfg.kinds), self.cfg.control, ",".join(map(str, self.cpus.cpus)))

    def run(self) -> int:
        poller = zmq.Poller()
        poller.register(self.control.sock, zmq.POLLIN)
        poller.register(self.workers, zmq.POLLIN)
        poller.register(self.xs.event_fd(), zmq.POLLIN)
        poller.register(self.sig_r, zmq.POLLIN)
        now = time.monotonic()
        next_rescan = now + self.cfg.rescan_interval
        next_metrics = now
        wd = self.notifier.watchdog_interval
        next_wd = now if wd else None
        while not self.stopping:
            now = time.monotonic()
            deadlines = [next_rescan, next_metrics, now + MAX_POLL]
            if next_wd is not None:
                deadlines.append(next_wd)
            deadlines += [d for d in (dev.next_deadline() for dev in self.devices()) if d is not None]
            if self.xs.next_deadline() is not None:
                deadlines.append(self.xs.next_deadline())
            timeout = max(0.0, min(deadlines) - now)
            poller.poll(int(timeout * 1000) + 1)
            try:
                self._handle_signals()
                if self.stopping:
                    break
                self._iteration()
            except Exception:  # a bug in one step must not kill every guest's share
                log.exception("internal error in the main loop; carrying on")
                continue
            now = time.monotonic()
            if now >= next_rescan:
                self._rescan()
                next_rescan = now + self.cfg.rescan_interval
            if now >= next_metrics:
                self._guard(self._metrics_tick)
                next_metrics = now + self.cfg.metrics_interval
            if next_wd is not None and now >= next_wd:
                self.notifier.watchdog()
                next_wd = now + wd
        self.shutdown(keep_serving=self.keep_serving)
        return EXIT_OK

    def _guard(self, fn) -> None:
        try:
            fn()
        except Exception:
            log.exception("internal error in %s; carrying on", getattr(fn, "__name__", fn))

    def _iteration(self) -> None:
        """One pass over every input. A lost xenstore connection changes nothing for the workers:
        the loop serves on (control, workers, timers) and reconnects with backoff (xs_reconnect.py)."""
        self._handle_workers()
        if self.xs.reconnect_if_due():
            self._after_reconnect()
        try:
            if self.xs.connected and self.discovery.handle_events():
                self._rescan()
        except XenStoreError as e:
            if e.errno not in LOST:  # a lost connection is logged once, by the wrapper
                log.warning("xenstore: %s", e)
        self.control.handle_ready()
        for dev in self.devices():
            dev.tick()
        self.discovery.sweep_forgotten()

    def _rescan(self) -> None:
        """Mark and sweep, only on a working connection: a scan that cannot read is no proof of removal."""
        if not self.xs.connected:
            return
        try:
            self.discovery.rescan()
        except XenStoreError as e:
            if e.errno not in LOST:
                log.warning("rescan abandoned (nothing released): %s", e)
        except Exception:
            log.exception("internal error in rescan; carrying on")

    def _after_reconnect(self) -> None:
        """A new xenstored connection (watches already re-armed): our libxl node again, then mark and sweep."""
        if self.holding_libxl_node:
            try:
                hold_libxl_node(self.xs, self.self_domid)
            except (StartupError, XenStoreError) as e:
                log.warning("after reconnecting: %s", e)
        self._rescan()

    def _handle_signals(self) -> None:
        try:
            data = os.read(self.sig_r, 256)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.keep_serving = signum == signal.SIGTERM and keep_serving_on_sigterm(self.cfg.on_sigterm)
                log.info("signal %s: %s", signal.Signals(signum).name,
                         "exiting for a restart; the ring workers keep serving" if self.keep_serving
                         else "closing every device and shutting down")
                self.stopping = True
            elif signum == signal.SIGHUP:
                try:
                    TABLE["reload"].execute(self, {})
                except CommandError:
                    pass  # already logged; the old configuration stays

    def _handle_workers(self, budget: int = 1000) -> None:
        by_name = {dev.name: dev for dev in self.devices()}
        for _ in range(budget):
            try:
                frames = self.workers.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            ident = frames[0].decode("ascii", "replace")
            try:
                msg = control.parse_worker_msg(frames[1])
            except control.ControlError as e:
                log.warning("%s: bad worker message: %s", ident, e)
                continue
            dev = by_name.get(ident.rpartition("/")[0])
            if dev is not None:
                dev.on_worker_message(ident, msg)

    def _metrics_tick(self) -> None:
        self.metrics.collect(self.devices(), {"rescans_total": self.discovery.rescans})
        self.metrics.publish(self.pub)
        line = self._status()
        if line != self._status_line:
            self._status_line = line
            self.notifier.status(line)

    def _status(self) -> str:
        devs = self.devices()
        connected = sum(1 for d in devs if d.state == "connected")
        rings = sum(len(d.rings.rings) for d in devs if d.rings)
        return f"serving {connected} device(s) with {rings} ring worker(s)"

    def devices(self) -> list[Device]:
        return list(self.discovery.devices.values())

    def shutdown(self, keep_serving: bool = False) -> None:
        """Every device Closed, every worker gone, sockets and nodes released.

        keep_serving: exit for a restart instead: devices stay Connected, workers serve on, the device
        state segments and libxl's node stay, for the next xen9pd to adopt (adopt.py).
        """
        if self.shut_down:
            return
        self.shut_down = True
        self.notifier.stopping()
        devs = self.devices()
        if keep_serving:
            workers = 0
            for dev in devs:
                workers += sum(1 for r in dev.rings.rings if r.pid) if dev.rings else 0
                if dev.dev_state is not None:
                    dev.dev_state.close()  # our mapping only: the segment stays for the next daemon
            try:
                self.discovery.stop()
            except XenStoreError:
                pass
            log.info("exited for a restart: %d device(s) left serving with %d ring worker(s)", len(devs), workers)
            return
        # Ask every worker at once so the drain takes one grace period, not one per device.
        for dev in devs:
            if dev.rings is not None:
                dev.rings.request_stop(self.send_stop)
        for dev in devs:
            dev.shutdown()
        try:
            self.discovery.stop()
        except XenStoreError:
            pass
        self.release_libxl_node()
        log.info("stopped: %d device(s) closed", len(devs))

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.server[0].shutdown()
        self.control.close()
        for s, ep in ((self.workers, self.cfg.workers), (self.pub, self.cfg.metrics)):
            s.close(0)
            path = ep[len("ipc://"):] if ep.startswith("ipc://") else None
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        signal.set_wakeup_fd(-1)
        os.close(self.sig_r)
        os.close(self.sig_w)


def _control_answers(zctx: zmq.Context, endpoint: str, timeout: float = 0.5) -> bool:
    """Is a daemon already serving this control endpoint? (so we never steal a live one's socket)"""
    path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None
    if path is not None and not os.path.exists(path):
        return False
    s = zctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(endpoint)
        s.send(control.dumps(control.request("ping")))
        return bool(s.poll(int(timeout * 1000)))
    except zmq.ZMQError:
        return False
    finally:
        s.close(0)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="xen9pd", description="Xen 9pfs backend supervisor: one worker process per ring.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 69 xenstore or control unavailable, 78 bad configuration. "
               f"Every option can also be set in the environment as {configmod.ENV_PREFIX}<NAME>.")
    ap.add_argument("--version", action="version", version=f"xen9pd {version()}")
    configmod.add_arguments(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    try:
        ns = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        cfg = configmod.load(ns)
    except ConfigError as e:
        print(f"xen9pd: bad config: {e}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.log_level)
    # `kill -USR1` prints every thread's stack to stderr and carries on (a daemon that looks hung).
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    try:
        platform = open_platform(cfg.platform, cfg.sim_dir)
        xs = ReconnectingXenStore(platform.xenstore)
    except (Xen9pError, OSError, ValueError, ImportError) as e:
        print(f"xen9pd: cannot reach xenstore ({cfg.platform}): {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        factory = make_factory(cfg.device_state)
    except Xen9pError as e:
        print(f"xen9pd: bad config: device_state: {e}", file=sys.stderr)
        xs.close()
        return EXIT_CONFIG
    zctx = zmq.Context()
    sup = None
    try:
        if _control_answers(zctx, cfg.control):
            print(f"xen9pd: another xen9pd already answers on {cfg.control}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        try:
            sup = Supervisor(cfg, xs, platform.self_domid, zctx, factory, Notifier(),
                             reload_config=lambda: configmod.load(ns), platform_name=platform.name)
        except (zmq.ZMQError, OSError) as e:
            print(f"xen9pd: cannot bind control/metrics/worker sockets: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        sup.install_signals()
        try:
            sup.start()
        except (StartupError, XenStoreError) as e:
            print(f"xen9pd: cannot start: {e}", file=sys.stderr)
            sup.shutdown()
            return EXIT_UNAVAILABLE
        return sup.run()
    finally:
        if sup is not None:
            # A no-op after a clean run. After an internal error the workers serve on for the next xen9pd.
            sup.shutdown(keep_serving=True)
            sup.close()
        xs.close()
        zctx.term()


if __name__ == "__main__":
    raise SystemExit(main())
