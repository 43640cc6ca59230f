"""The supervisor's Device driven by the xenstore values a frontend controls, in any order.

A guest owns /local/domain/<domid>/device/9pfs/<devid>/*: state, version, num-rings, ring-ref<i>,
event-channel-<i>, tag. Each input writes, rewrites and removes those nodes with any strings (digits
with signs, spaces, hex, huge numbers, NUL and every byte value) and steps the device (reconcile,
tick) between writes; the toolstack's nodes are sane. Workers are fake processes (no fork).

Properties: reconcile/tick never raise; nothing is written outside the backend's own directory; the
backend state written is a XenbusState; what reaches a worker's command line is validated (1 <=
num-rings <= max-rings, refs and ports in 1..2^32-1, the tag printable and at most 64 characters);
a device that fails logs one warning naming it.
"""
from __future__ import annotations

import logging
import tempfile

from xen9p_common import control
from xen9p_common.xenbus import DevicePhase, XenbusState
from xen9p_supervisor import config
from xen9p_supervisor.device import Context, Device
from xen9p_supervisor.devstate import NullStateFactory
from xen9p_supervisor.workers import CpuAllocator

from ..draw import Draw

DOMID, DEVID = 7, 0
BE = f"/local/domain/0/backend/xen_9pfs/{DOMID}/{DEVID}"
FE = f"/local/domain/{DOMID}/device/9pfs/{DEVID}"
KEYS = ("state", "version", "num-rings", "ring-ref0", "ring-ref1", "ring-ref2", "ring-ref7", "ring-ref8",
        "event-channel-0", "event-channel-1", "event-channel-2", "event-channel-8", "tag")
VALUES = ("1", "2", "3", "4", "5", "6", "0", "-1", "+1", " 1", "1 ", "01", "0x10", "1e3", "4294967295",
          "4294967296", "99999999999", "", " ", "\x00", "1\x002", "\u0661", "\uff11", "8", "9", "255", "65535",
          "\udcff", "1" * 40, "tag\nwith\nnewlines", "\x1b[2J", "share")


class Store:
    """Enough of the XenStore interface for Device: read, write, transactions; writes are logged."""

    def __init__(self, nodes: dict[str, str]) -> None:
        self.nodes = nodes
        self.writes: list[tuple[str, str]] = []

    def read(self, path: str) -> str | None:
        return self.nodes.get(path)

    def write(self, path: str, value: str) -> None:
        self.writes.append((path, value))
        self.nodes[path] = value

    def transaction(self, fn, retries: int = 16):
        return fn(self)


class FakeProc:
    """A worker that is alive until signalled."""

    _next = 1000

    def __init__(self) -> None:
        FakeProc._next += 1
        self.pid = FakeProc._next
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.returncode = -sig

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


class Launcher:
    def __init__(self) -> None:
        self.specs: list = []

    def spawn(self, spec, cpu) -> FakeProc:
        self.specs.append(spec)
        return FakeProc()


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


_cfg = None
_export = None


def _setup():
    global _cfg, _export
    if _cfg is None:
        _cfg = config.build({}, {})
        _export = tempfile.mkdtemp(prefix="xen9p-fuzz-xs-")
    return _cfg, _export


def draw_value(d: Draw) -> str:
    if d.chance(192):
        return d.pick(VALUES)
    return d.blob(24).decode("utf-8", "surrogateescape")


def one_input(data: bytes) -> None:
    cfg, export = _setup()
    d = Draw(data)
    nodes = {BE: "", BE + "/path": export, BE + "/security_model": "passthrough", BE + "/state": "1",
             BE + "/online": "1", FE: ""}
    xs = Store(nodes)
    launcher = Launcher()
    clock = [0.0]
    ctx = Context(xs=xs, cfg=cfg, self_domid=0, launcher=launcher, cpus=CpuAllocator([0]),
                  state_factory=NullStateFactory(), clock=lambda: clock[0])
    dev = Device(ctx, "xen_9pfs", DOMID, DEVID)
    warn = _Warnings()
    log = logging.getLogger("xen9pd")
    log.addHandler(warn)
    if not d.chance(32):  # mostly start from a frontend that would connect, then break it
        n = d.between(1, 2)
        nodes.update({f"{FE}/version": "1", f"{FE}/num-rings": str(n), f"{FE}/tag": "share",
                      f"{FE}/state": str(int(XenbusState.Initialised))})
        for i in range(n):
            nodes[f"{FE}/ring-ref{i}"] = str(100 + i)
            nodes[f"{FE}/event-channel-{i}"] = str(10 + i)
    try:
        for _ in range(d.below(40)):
            op = d.below(9)
            if op < 5:
                key = d.pick(KEYS)
                if op == 0 and key == "state":
                    nodes[f"{FE}/state"] = str(d.pick(list(XenbusState)).value)
                else:
                    nodes[f"{FE}/{key}"] = draw_value(d)
            elif op == 5:
                nodes.pop(f"{FE}/{d.pick(KEYS)}", None)
            elif op == 6 and dev.rings is not None:  # a worker reports (ready, or a fatal error)
                r = d.pick(dev.rings.rings)
                kind = d.pick((control.W_READY, control.W_READY, control.W_ERROR, control.W_BYE))
                dev.on_worker_message(r.name, {"type": kind, "pid": r.pid, "fatal": d.flag(), "reason": draw_value(d)})
            else:
                clock[0] += d.pick((0.0, 0.5, 5.0, 60.0))
            dev.reconcile()
            dev.tick()
            _check(dev, xs, launcher, cfg)
        dev.shutdown()
    finally:
        log.removeHandler(warn)
    for line in warn.lines:
        assert line.startswith(f"dom{DOMID}/dev{DEVID}"), f"a warning not naming the device: {line!r}"


def _check(dev: Device, xs: Store, launcher: Launcher, cfg) -> None:
    assert isinstance(dev.state, DevicePhase)
    for path, value in xs.writes:
        assert path.startswith(BE + "/"), f"wrote {path!r} outside the backend directory"
        if path == BE + "/state":
            XenbusState(int(value))
    for spec in launcher.specs:
        assert 1 <= spec.ring_ref <= 0xFFFFFFFF and 1 <= spec.evtchn <= 0xFFFFFFFF, spec
        assert 0 <= spec.ring < cfg.max_rings, spec
    assert len(dev.tag) <= 64 and dev.tag.isprintable(), repr(dev.tag)
    assert dev.num_rings <= cfg.max_rings
