"""One 9pfs device (kind, domid, devid): observes xenstore, drives the xenbus transition table, runs its actions.

Everything a guest wrote is validated here before it reaches a worker's command line; any failure goes
through one path (REPORT_FAILURE: a warning naming the device and the reason, backend Closed).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from xen9p_common.control import RingSpec, ring_name
from xen9p_common.errors import Xen9pError, XenStoreError
from xen9p_common.models import SECURITY_MODELS
from xen9p_common.platform import Transaction, XenStore
from xen9p_common.xenbus import (Action, DevicePhase, Event, XenbusState, backend_event, frontend_event,
                                 parse_state, transition)

from . import policy
from .config import Config
from .devstate import DeviceStateFactory, DeviceLimits, StateHandle, segment_name
from .export_dir import ExportError, ensure_export
from .restart import RestartPolicy
from .toolstack import backend_path, domain_path, frontend_path
from .workers import CpuAllocator, Launcher, Ring, RingSet, SpawnError

log = logging.getLogger("xen9pd")

TRANSPORT_VERSION = "1"
_U32_MAX = 0xFFFFFFFF


class DeviceFailure(Xen9pError):
    """A setup step failed; the message is the reason logged with the device's name."""


def parse_uint(raw: str | None, key: str, lo: int = 0, hi: int = _U32_MAX) -> int:
    """A guest- or toolstack-written decimal number, strictly: digits only, within lo..hi."""
    if raw is None:
        raise DeviceFailure(f"{key} is missing")
    s = raw.strip()
    if not s or len(s) > 10 or not s.isascii() or not s.isdigit():
        raise DeviceFailure(f"{key} {raw[:40]!r} is not a decimal number")
    n = int(s)
    if not lo <= n <= hi:
        raise DeviceFailure(f"{key} {n} is out of range {lo}..{hi}")
    return n


@dataclass
class Context:
    """What every Device shares: collaborators composed in main()."""

    xs: XenStore
    cfg: Config
    self_domid: int
    launcher: Launcher
    cpus: CpuAllocator
    state_factory: DeviceStateFactory
    send_stop: Callable[[Ring], None] | None = None
    clock: Callable[[], float] = time.monotonic
    adopter: Any = None  # adopt.Adopter while the first scan runs: takes over what a previous xen9pd left


class Device:
    def __init__(self, ctx: Context, kind: str, domid: int, devid: int) -> None:
        self.ctx = ctx
        self.kind, self.domid, self.devid = kind, domid, devid
        self.name = ring_name(domid, devid)
        self.be = backend_path(ctx.self_domid, kind, domid, devid)
        self.fe = frontend_path(domid, devid)
        self.state = DevicePhase.NEW
        self.last_written: XenbusState | None = None
        self.fail_reason: str | None = None
        self.forgotten = False
        self.export = ""
        self.security_model = ""
        self.tag = ""
        self.limits: DeviceLimits | None = None
        self.num_rings = 0
        self.refs: list[int] = []
        self.ports: list[int] = []
        self.rings: RingSet | None = None
        self.dev_state: StateHandle | None = None
        self.adv_max_rings = ctx.cfg.max_rings
        self.adv_max_order = ctx.cfg.max_ring_order
        self.closing_since: float | None = None
        self.connected_at: float | None = None       # wall clock, for uptime
        self.restarts_before = 0                     # restarts of previous connections
        self._observed_fe: XenbusState | None = None
        self.state_name = ""

    # -- logging ------------------------------------------------------------------

    def info(self, msg: str, *a: object) -> None:
        log.info(f"{self.name}: {msg}", *a)

    def warn(self, msg: str, *a: object) -> None:
        log.warning(f"{self.name}: {msg}", *a)

    # -- observing ----------------------------------------------------------------

    def reconcile(self) -> None:
        """Read our and the frontend's nodes and feed whatever events they imply (level-triggered)."""
        if self.forgotten:
            return
        xs = self.ctx.xs
        try:
            if xs.read(self.be) is None:
                self.feed(Event.BACKEND_GONE)
                return
            observed = parse_state(xs.read(self.be + "/state"))
            online = (xs.read(self.be + "/online") or "1").strip() != "0"
            if (self.state is DevicePhase.NEW and self.last_written is None and online
                    and observed not in (None, XenbusState.Initialising)):
                self._take_over(observed)
                observed = self.last_written  # what we just wrote; the stale value is no toolstack request
            ev = backend_event(observed, online, self.last_written)
            if ev is not None:
                self.feed(ev)
            if self.forgotten:
                return
            self._observed_fe = fe = parse_state(xs.read(self.fe + "/state"))
        except XenStoreError as e:
            self.warn("xenstore read failed: %s", e)
            return
        ev = frontend_event(fe)
        if ev is not None:
            self.feed(ev)

    def _take_over(self, observed: XenbusState) -> None:
        """A backend state we did not write: a previous xen9pd exited (restart, crash) or stopped.

        A device it left Connected is adopted with its workers and device state (adopt.py): the guest
        notices nothing. Anything else (mid-handshake, no state left, a layout we cannot read) goes
        through the STALE_BACKEND row, which closes it (xen9p_common.xenbus), so the guest never waits
        on a ring nobody serves and reconnects with a fresh session.
        """
        if observed is XenbusState.Connected and self.ctx.adopter is not None and self.ctx.adopter.adopt(self):
            return
        self.info("backend found in state %s written by a previous backend instance; closing it so the "
                  "frontend reconnects", observed.name)
        self.feed(Event.STALE_BACKEND)

    def tick(self) -> None:
        """Timers: worker supervision and the close timeout."""
        if self.rings is not None:
            for r, what in self.rings.tick():
                if what == "fatal" and self.rings is not None:
                    self.fail(f"{r.name}: {r.fatal_reason}")
                    break
        if (self.state is DevicePhase.CLOSING and self.closing_since is not None
                and self.ctx.clock() - self.closing_since > self.ctx.cfg.close_timeout):
            self.warn("frontend did not reach Closed within %.1fs; closing anyway", self.ctx.cfg.close_timeout)
            self.feed(Event.CLOSE_TIMEOUT)

    def next_deadline(self) -> float | None:
        ds = []
        if self.rings is not None and (d := self.rings.next_deadline()) is not None:
            ds.append(d)
        if self.state is DevicePhase.CLOSING and self.closing_since is not None:
            ds.append(self.closing_since + self.ctx.cfg.close_timeout)
        return min(ds) if ds else None

    def on_worker_message(self, ring: str, msg: dict) -> None:
        if self.rings is None:
            return
        r = self.rings.by_name(ring)
        if r is None:
            return
        what = self.rings.on_message(r, msg)
        if what == "ready" and self.state is DevicePhase.CONNECTING and self.rings.all_running():
            self.feed(Event.WORKERS_READY)
        elif what == "fatal":
            self.fail(f"{r.name}: worker reports a fatal error: {r.fatal_reason}")

    def fail(self, reason: str) -> None:
        self.fail_reason = reason
        self.feed(Event.FAILURE)

    # -- the transition table ----------------------------------------------------------

    def feed(self, event: Event) -> None:
        nxt, actions = transition(self.state, event)
        if nxt is self.state and not actions:
            return
        prev, self.state = self.state, nxt
        log.debug("%s: %s + %s -> %s %s", self.name, prev, event, nxt, [str(a) for a in actions])
        if nxt is DevicePhase.CLOSING and prev is not DevicePhase.CLOSING:
            self.closing_since = self.ctx.clock()
        for a in actions:
            try:
                self._run(a, event)
            except DeviceFailure as e:
                self.fail_reason = str(e)
                self.feed(Event.FAILURE)
                return

    def _run(self, a: Action, event: Event) -> None:
        getattr(self, "_a_" + a.value)(event)

    # -- actions --------------------------------------------------------------------

    def _a_validate_config(self, event: Event) -> None:
        self.fail_reason = None
        try:
            self._read_config()
        except XenStoreError as e:
            raise DeviceFailure(f"cannot read the toolstack's keys: {e}") from e

    def _read_config(self) -> None:
        xs, cfg = self.ctx.xs, self.ctx.cfg
        path = xs.read(self.be + "/path")
        if not path or not path.startswith("/"):
            raise DeviceFailure(f"backend path {path!r} is not an absolute host path")
        try:
            if ensure_export(path, self.kind):
                self.info("created the missing export directory %s (kind %s, as xen-9pfsd does)", path, self.kind)
        except ExportError as e:
            raise DeviceFailure(str(e)) from e
        model = (xs.read(self.be + "/security_model") or "none").strip()
        if model not in SECURITY_MODELS:
            raise DeviceFailure(f"security_model {model[:40]!r} is not one of {', '.join(SECURITY_MODELS)}")
        tag = xs.read(self.fe + "/tag") or ""
        self.tag = "".join(c for c in tag[:64] if c.isprintable())

        def opt(key: str, hi: int = 1 << 31) -> int | None:
            raw = xs.read(f"{self.be}/{key}")
            return None if raw is None or raw.strip() == "" else parse_uint(raw, key, 0, hi)

        # The operator's [[export]] tables: read-only, the model, defaults for keys the toolstack left out.
        pol = policy.resolve(cfg.export, self.domid, (xs.read(domain_path(self.domid) + "/name") or "").strip(),
                             self.tag, path)
        model = pol.security_model or model
        auto_delete = opt("auto-delete", 1)
        self.limits = DeviceLimits(max_fids=cfg.max_fids,
                                   max_open_files=opt("max-open-files") or pol.max_open_files or cfg.max_open_files,
                                   max_space_mb=_first(opt("max-space"), pol.max_space),
                                   max_files=_first(opt("max-files"), pol.max_files),
                                   auto_delete=not pol.readonly and bool(_first(auto_delete, pol.auto_delete)),
                                   readonly=pol.readonly)
        self.export, self.security_model = path, model
        if pol != policy.Resolved():
            self.info("export policy: %s", ", ".join(f"{k}={v}" for k, v in vars(pol).items() if v is not None))

    def _write_state(self, st: XenbusState) -> None:
        def tx(t: Transaction) -> bool:
            if t.read(self.be) is None:
                return False  # never recreate a vanished backend dir
            t.write(self.be + "/state", str(int(st)))
            return True
        try:
            if self.ctx.xs.transaction(tx):
                self.last_written = st
        except XenStoreError as e:
            self.warn("cannot write backend state %s: %s", st.name, e)

    def _a_write_features(self, event: Event) -> None:
        cfg = self.ctx.cfg
        self.adv_max_rings, self.adv_max_order = cfg.max_rings, cfg.max_ring_order

        def tx(t: Transaction) -> None:
            if t.read(self.be) is None:
                return
            t.write(self.be + "/versions", TRANSPORT_VERSION)
            t.write(self.be + "/max-rings", str(self.adv_max_rings))
            t.write(self.be + "/max-ring-page-order", str(self.adv_max_order))
        try:
            self.ctx.xs.transaction(tx)
        except XenStoreError as e:
            raise DeviceFailure(f"cannot write features: {e}") from e

    def _a_set_state_initwait(self, event: Event) -> None:
        self._write_state(XenbusState.InitWait)
        self.info("advertised versions=1 max-rings=%d max-ring-page-order=%d, InitWait (%s, export %s)",
                  self.adv_max_rings, self.adv_max_order, self.kind, self.export)

    def _a_validate_frontend(self, event: Event) -> None:
        xs = self.ctx.xs
        try:
            version = xs.read(self.fe + "/version")
            if version is None or version.strip() != TRANSPORT_VERSION:
                raise DeviceFailure(f"frontend version {(version or '')[:20]!r} is not one we offered "
                                    f"({TRANSPORT_VERSION})")
            n = parse_uint(xs.read(self.fe + "/num-rings"), "num-rings", 1, self.adv_max_rings)
            refs, ports = [], []
            for i in range(n):
                refs.append(parse_uint(xs.read(f"{self.fe}/ring-ref{i}"), f"ring-ref{i}", 1))
                ports.append(parse_uint(xs.read(f"{self.fe}/event-channel-{i}"), f"event-channel-{i}", 1))
        except XenStoreError as e:
            raise DeviceFailure(f"cannot read the frontend's keys: {e}") from e
        self.num_rings, self.refs, self.ports = n, refs, ports

    def _a_create_device_state(self, event: Event) -> None:
        if self.dev_state is not None:
            return
        assert self.limits is not None
        name = segment_name(self.domid, self.devid)
        try:
            self.dev_state = self.ctx.state_factory.create(
                name, limits=self.limits, export=self.export, security_model=self.security_model,
                msize_cap=self.ctx.cfg.msize_cap, num_rings=self.num_rings)
        except Xen9pError as e:
            raise DeviceFailure(str(e)) from e
        self.state_name = name

    def make_rings(self, state_name: str) -> RingSet:
        """The RingSet for the validated frontend values (no process started yet)."""
        cfg = self.ctx.cfg
        specs = [RingSpec(self.domid, self.devid, i, self.refs[i], self.ports[i], state_name, self.export,
                          self.security_model, cfg.workers, self.adv_max_order) for i in range(self.num_rings)]
        restart = RestartPolicy(cfg.startsecs, cfg.startretries, cfg.backoff_initial, cfg.backoff_max)
        return RingSet(specs, launcher=self.ctx.launcher, cpus=self.ctx.cpus, policy=restart,
                       heartbeat_timeout=cfg.heartbeat_timeout, ready_timeout=cfg.ready_timeout,
                       kill_grace=cfg.kill_grace, clock=self.ctx.clock)

    def read_frontend_and_config(self) -> None:
        """The toolstack's and the frontend's keys, validated as for a fresh connect (DeviceFailure if bad)."""
        self._a_validate_config(Event.STALE_BACKEND)
        self._a_validate_frontend(Event.STALE_BACKEND)

    def resume_connected(self, state: StateHandle, rings: RingSet) -> None:
        """Serve on with an adopted device state and rings: Connected as the previous xen9pd left it."""
        self.dev_state, self.state_name, self.rings = state, state.name, rings
        self.state = DevicePhase.CONNECTED
        self.last_written = XenbusState.Connected
        self.connected_at = time.time()

    def _a_spawn_workers(self, event: Event) -> None:
        if self.rings is not None:
            return
        self.rings = self.make_rings(self.state_name)
        try:
            self.rings.start()
        except SpawnError as e:
            raise DeviceFailure(str(e)) from e
        self.info("frontend accepted: %d ring(s); workers starting", self.num_rings)

    def _a_set_state_connected(self, event: Event) -> None:
        self._write_state(XenbusState.Connected)
        self.connected_at = time.time()
        self.info("Connected (%d ring(s), tag %r)", self.num_rings, self.tag)

    def _a_stop_workers(self, event: Event) -> None:
        if self.rings is None:
            return
        rings, self.rings = self.rings, None
        self.restarts_before += sum(r.restarter.restarts for r in rings.rings)
        if not rings.stop(self.ctx.send_stop):
            self.warn("some workers did not exit")

    def _a_set_state_closing(self, event: Event) -> None:
        self._write_state(XenbusState.Closing)
        self.info("Closing (%s)", event)

    def _a_set_state_closed(self, event: Event) -> None:
        self._write_state(XenbusState.Closed)
        self.connected_at = None
        self.info("Closed (%s)", event)

    def _a_free_device_state(self, event: Event) -> None:
        st, self.dev_state = self.dev_state, None
        if st is None:
            return
        try:
            st.close()
            st.unlink()
        except (OSError, Xen9pError) as e:
            self.warn("freeing the device state failed: %s", e)

    def _a_report_failure(self, event: Event) -> None:
        self.warn("disconnecting: %s", self.fail_reason or "unspecified failure")

    def _a_forget_device(self, event: Event) -> None:
        self.forgotten = True
        self.connected_at = None
        self.info("released (%s)", event)

    # -- operator -------------------------------------------------------------------

    def shutdown(self) -> None:
        """Daemon exit: stop the workers and leave the backend Closed (if it still exists)."""
        self._a_stop_workers(Event.BACKEND_OFFLINE)
        if not self.forgotten and self.state is not DevicePhase.NEW:
            self._write_state(XenbusState.Closed)
        self._a_free_device_state(Event.BACKEND_OFFLINE)
        self.state = DevicePhase.CLOSED

    def restarts(self) -> int:
        live = sum(r.restarter.restarts for r in self.rings.rings) if self.rings else 0
        return self.restarts_before + live

    def status(self) -> dict:
        now = time.time()
        rings = []
        for r in (self.rings.rings if self.rings else []):
            rs = r.restarter
            rings.append({
                "ring": r.spec.ring, "name": r.name, "pid": r.pid, "cpu": r.cpu, "state": str(rs.state),
                "restarts": rs.restarts, "uptime": round(now - r.started_at, 3) if r.pid and r.started_at else None,
                "exits": {str(k): v for k, v in rs.exits.items()},
                "last_exit": [str(rs.last_exit[0]), rs.last_exit[1]] if rs.last_exit else None,
                "ring_ref": r.spec.ring_ref, "evtchn": r.spec.evtchn, "adopted": r.adopted, "build": r.build,
            })
        return {
            "name": self.name, "kind": self.kind, "domid": self.domid, "devid": self.devid, "tag": self.tag,
            "path": self.export, "security_model": self.security_model, "state": str(self.state),
            "readonly": bool(self.limits and self.limits.readonly),
            "backend_state": self.last_written.name if self.last_written is not None else None,
            "num_rings": self.num_rings if self.rings else 0, "rings": rings,
            "uptime": round(now - self.connected_at, 3) if self.connected_at else None,
            "restarts": self.restarts(), "error": self.fail_reason,
            "limits": vars(self.limits).copy() if self.limits else None,
        }


def _first(*values):
    """The first value that is not None (0 when none is)."""
    return next((v for v in values if v is not None), 0)
