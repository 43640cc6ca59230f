"""What libxl does for a 9pfs device, for hosts whose xl cannot (and for tests and the simulator).

attach() writes the frontend and backend nodes with libxl's permissions in one transaction;
detach() writes online=0 + state=5 like libxl, waits for the backend's Closed, then removes both dirs.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping

from xen9p_common.errors import Xen9pError, XenStoreError
from xen9p_common.platform import Perm, Transaction, XenStore
from xen9p_common.xenbus import XenbusState, parse_state

KINDS = ("9pfs", "xen_9pfs")
LIMIT_KEYS = ("max-files", "max-open-files", "max-space", "auto-delete")


class ToolstackError(Xen9pError):
    """An attach or detach could not be done (device exists, timed out, bad argument)."""


# The xenstore layout of a 9pfs device (one home: xen9pd's discovery and devices use these too).
def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def backend_root(backend_domid: int, kind: str) -> str:
    """Where the backend domain's devices of one kind live: backend_root/<domid>/<devid>."""
    return f"{domain_path(backend_domid)}/backend/{kind}"


def backend_path(backend_domid: int, kind: str, domid: int, devid: int) -> str:
    return f"{backend_root(backend_domid, kind)}/{domid}/{devid}"


def frontend_path(domid: int, devid: int) -> str:
    return f"{domain_path(domid)}/device/9pfs/{devid}"


def _limit_items(limits: Mapping[str, object] | None) -> list[tuple[str, str]]:
    out = []
    for k, v in (limits or {}).items():
        key = k.replace("_", "-")
        if key not in LIMIT_KEYS:
            raise ToolstackError(f"unknown device limit {k!r} (known: {', '.join(LIMIT_KEYS)})")
        if isinstance(v, bool):
            v = int(v)
        out.append((key, str(v)))
    return out


def attach(xs: XenStore, *, backend_domid: int = 0, domid: int, devid: int = 0, kind: str = "xen_9pfs",
           path: str, tag: str, security_model: str = "none",
           limits: Mapping[str, object] | None = None) -> tuple[str, str]:
    """Create the device nodes as libxl does; returns (backend_path, frontend_path)."""
    if kind not in KINDS:
        raise ToolstackError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if domid == backend_domid:
        raise ToolstackError("a domain cannot be its own 9pfs backend")
    be = backend_path(backend_domid, kind, domid, devid)
    fe = frontend_path(domid, devid)
    extra = _limit_items(limits)

    def tx(t: Transaction) -> None:
        if t.read(be + "/state") is not None or t.read(fe + "/state") is not None:
            raise ToolstackError(f"dom{domid}/dev{devid} already exists ({be} or {fe})")
        # Permissions first on the dirs so the guest can never see a half-permissioned node.
        t.mkdir(fe)
        t.set_perms(fe, [Perm("n", domid), Perm("r", backend_domid)])
        t.mkdir(be)
        t.set_perms(be, [Perm("n", backend_domid), Perm("r", domid)])
        for k, v in (("backend", be), ("backend-id", str(backend_domid)), ("state", "1"), ("tag", tag)):
            t.write(f"{fe}/{k}", v)
        for k, v in [("frontend", fe), ("frontend-id", str(domid)), ("online", "1"), ("state", "1"),
                     ("path", path), ("security_model", security_model)] + extra:
            t.write(f"{be}/{k}", v)

    xs.transaction(tx)
    return be, fe


def _default_clock() -> float:
    return time.monotonic()


def wait_state(xs: XenStore, path: str, want: set[XenbusState], timeout: float,
               clock: Callable[[], float] = _default_clock, interval: float = 0.02) -> XenbusState | None:
    """Poll `path` until it reads one of `want` (returned) or the deadline passes (None).

    A missing node counts as Closed: a backend that removed its dir has finished closing.
    """
    deadline = clock() + timeout
    while True:
        raw = xs.read(path)
        st = XenbusState.Closed if raw is None else parse_state(raw)
        if st in want:
            return st
        if clock() >= deadline:
            return None
        time.sleep(interval)  # a bounded poll of the store, not test synchronisation


def detach(xs: XenStore, *, backend_domid: int = 0, domid: int, devid: int = 0, kind: str = "xen_9pfs",
           timeout: float = 10.0, remove: bool = True) -> bool:
    """libxl's detach: online=0 + state=5, wait up to `timeout` for Closed, then remove the nodes.

    Returns True if the backend reached Closed in time (the nodes are removed either way, like libxl).
    """
    be = backend_path(backend_domid, kind, domid, devid)
    fe = frontend_path(domid, devid)
    if xs.read(be + "/state") is None:
        raise ToolstackError(f"dom{domid}/dev{devid}: no {kind} backend at {be}")

    def tx(t: Transaction) -> None:
        t.write(be + "/online", "0")
        t.write(be + "/state", str(int(XenbusState.Closing)))

    xs.transaction(tx)
    closed = wait_state(xs, be + "/state", {XenbusState.Closed}, timeout) is not None
    if remove:
        for p in (be, fe):
            try:
                xs.rm(p)
            except XenStoreError:
                pass  # already gone
    return closed
