"""The zmq message schema shared by xen9pd, the ring workers and xen9pctl.

Everything on the wire is one JSON object per zmq frame (metrics: topic frame + JSON frame).
Version 1. Unknown fields are ignored; a missing or wrong `v` is an error.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from .errors import Xen9pError

VERSION = 1

DEFAULT_CONTROL = "ipc:///run/xen9p/control.sock"
DEFAULT_METRICS = "ipc:///run/xen9p/metrics.sock"
DEFAULT_WORKERS = "ipc:///run/xen9p/workers.sock"

# Operator commands (control ROUTER): xen9p_supervisor/commands.py, one class each.

# Worker -> supervisor message types (DEALER -> ROUTER; the DEALER identity is the ring name).
W_HELLO = "hello"          # {pid, ring}: process started
W_READY = "ready"          # ring mapped and event channel bound
W_HEARTBEAT = "heartbeat"  # {ts}: alive; silence beyond the timeout gets SIGABRT then SIGKILL
W_STATS = "stats"          # {metrics: {...}}: numbers only, counters end in _total
W_ERROR = "error"          # {reason, fatal}: fatal = the device must be disconnected (bad ring)
W_BYE = "bye"              # {reason}: clean exit follows
WORKER_TYPES = (W_HELLO, W_READY, W_HEARTBEAT, W_STATS, W_ERROR, W_BYE)

# Supervisor -> worker
S_STOP = "stop"
S_LOG_LEVEL = "log-level"


class ControlError(Xen9pError):
    """A control message is malformed; `code` is a short machine-readable reason."""

    def __init__(self, code: str, msg: str) -> None:
        self.code = code
        super().__init__(msg)


def ring_name(domid: int, devid: int, ring: int | None = None) -> str:
    """'dom3/dev0' or 'dom3/dev0/ring1': the name used in logs, titles and identities."""
    base = f"dom{domid}/dev{devid}"
    return base if ring is None else f"{base}/ring{ring}"


def metrics_topic(domid: int | None = None, devid: int | None = None, ring: int | None = None) -> str:
    """Hierarchical PUB topics: metrics.daemon, metrics.dom3.dev0, metrics.dom3.dev0.ring1."""
    if domid is None:
        return "metrics.daemon"
    t = f"metrics.dom{domid}.dev{devid}"
    return t if ring is None else f"{t}.ring{ring}"


def dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def loads(raw: bytes) -> dict:
    """Parse one message; ControlError for anything that is not a v1 JSON object."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ControlError("bad-json", f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ControlError("bad-request", "message is not a JSON object")
    if obj.get("v") != VERSION:
        raise ControlError("bad-version", f"unsupported protocol version {obj.get('v')!r} (want {VERSION})")
    return obj


def request(cmd: str, args: dict | None = None, id: Any = None) -> dict:
    return {"v": VERSION, "id": id if id is not None else os.urandom(4).hex(), "cmd": cmd, "args": args or {}}


def parse_request(raw: bytes) -> dict:
    obj = loads(raw)
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise ControlError("bad-request", "missing 'cmd'")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise ControlError("bad-request", "'args' must be an object")
    return {"v": VERSION, "id": obj.get("id"), "cmd": cmd, "args": args}


def reply_ok(req_id: Any, result: Any) -> dict:
    return {"v": VERSION, "id": req_id, "ok": True, "result": result}


def reply_error(req_id: Any, code: str, message: str) -> dict:
    return {"v": VERSION, "id": req_id, "ok": False, "error": {"code": code, "message": message}}


def worker_msg(mtype: str, **fields: Any) -> dict:
    if mtype not in WORKER_TYPES:
        raise ValueError(f"unknown worker message type {mtype!r}")
    return {"v": VERSION, "type": mtype, **fields}


def parse_worker_msg(raw: bytes) -> dict:
    obj = loads(raw)
    if obj.get("type") not in WORKER_TYPES:
        raise ControlError("bad-type", f"unknown worker message type {obj.get('type')!r}")
    return obj


@dataclass(frozen=True)
class RingSpec:
    """What a ring worker is told on its command line (it never reads xenstore)."""

    domid: int
    devid: int
    ring: int
    ring_ref: int
    evtchn: int
    state_name: str          # shared-memory name of the device state
    export: str
    security_model: str
    supervisor: str          # zmq endpoint of the supervisor's worker ROUTER
    max_ring_order: int = 9  # what the device advertised: a frontend's bigger ring_order closes it

    @property
    def name(self) -> str:
        return ring_name(self.domid, self.devid, self.ring)
