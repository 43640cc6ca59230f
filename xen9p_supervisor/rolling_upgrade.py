"""`xen9pctl upgrade`: move ring workers onto the installed code, one ring at a time, guests serving on.

After a package upgrade, `systemctl restart xen9pd` runs the new daemon, which adopts the workers the old
one left (still running the old code). Each replacement here is an operator restart-ring: the old worker
stops, a fresh one (the daemon's worker command: the new code) resumes the ring through the crash-resume
journal, and the next ring is touched only once this one serves again (running, with its new pid). A ring
that does not come back stops the upgrade; the rings not yet replaced keep their old workers.
"""
from __future__ import annotations

import time
from typing import Callable, TextIO

Call = Callable[[str, dict], dict]


class UpgradeFailed(Exception):
    """A ring did not serve again; the message names it and why."""


def plan(status: dict, everything: bool) -> list[str]:
    """The rings to replace: of connected devices, those adopted from a previous daemon (or all)."""
    out = []
    for dev in status.get("devices", []):
        if dev.get("state") != "connected":
            continue
        out += [r["name"] for r in dev.get("rings", []) if everything or r.get("adopted")]
    return out


def _ring(status: dict, name: str) -> dict | None:
    for dev in status.get("devices", []):
        for r in dev.get("rings", []):
            if r["name"] == name:
                return r
    return None


def _result(reply: dict, what: str) -> dict:
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise UpgradeFailed(f"{what}: {err.get('message', err)}")
    return reply.get("result") or {}


def upgrade(call: Call, rings: list[str], timeout: float, out: TextIO, poll: float = 0.1,
            clock: Callable[[], float] = time.monotonic) -> int:
    """Replace each ring's worker in turn; returns how many were replaced (UpgradeFailed stops it)."""
    for i, name in enumerate(rings, 1):
        old = _ring(_result(call("status", {}), "status"), name)
        new_pid = _result(call("restart-ring", {"ring": name}), f"restart-ring {name}").get("pid")
        deadline = clock() + timeout
        while True:
            r = _ring(_result(call("status", {}), "status"), name)
            if r is not None and r.get("state") == "running" and r.get("pid") == new_pid:
                break
            if clock() >= deadline:
                state = r.get("state") if r else "gone"
                raise UpgradeFailed(f"{name}: the new worker is not serving after {timeout:g}s (state {state}); "
                                    f"{len(rings) - i} ring(s) not upgraded")
            time.sleep(poll)  # polling interval of a deadline-bounded wait on the daemon's status
        print(f"[{i}/{len(rings)}] {name}: pid {old.get('pid') if old else '-'} -> {new_pid}", file=out, flush=True)
    return len(rings)
