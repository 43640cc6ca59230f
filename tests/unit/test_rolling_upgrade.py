"""xen9pctl upgrade's plan and its one-ring-at-a-time loop against a scripted daemon."""
from __future__ import annotations

import io

import pytest

from xen9p_supervisor.rolling_upgrade import UpgradeFailed, plan, upgrade


def _status(rings: dict[str, tuple[int | None, str, bool]], state: str = "connected") -> dict:
    devs: dict[str, list] = {}
    for name, (pid, st, adopted) in rings.items():
        devs.setdefault(name.rpartition("/")[0], []).append(
            {"name": name, "pid": pid, "state": st, "adopted": adopted})
    return {"devices": [{"name": d, "state": state, "rings": rs} for d, rs in devs.items()]}


def test_plan_takes_adopted_rings_of_connected_devices_unless_everything():
    st = _status({"dom1/dev0/ring0": (10, "running", True), "dom1/dev0/ring1": (11, "running", False)})
    assert plan(st, everything=False) == ["dom1/dev0/ring0"]
    assert plan(st, everything=True) == ["dom1/dev0/ring0", "dom1/dev0/ring1"]
    closed = _status({"dom2/dev0/ring0": (None, "stopped", True)}, state="closed")
    assert plan(closed, everything=True) == []


class Daemon:
    """Answers status and restart-ring; a restarted ring reports running after `ready_after` status calls."""

    def __init__(self, rings: list[str], ready_after: int = 2, never: str | None = None) -> None:
        self.rings = {n: [100 + i, "running", True] for i, n in enumerate(rings)}
        self.ready_after, self.never = ready_after, never
        self.pending: dict[str, int] = {}
        self.log: list[str] = []
        self.next_pid = 500

    def __call__(self, cmd: str, args: dict) -> dict:
        if cmd == "restart-ring":
            name = args["ring"]
            assert not self.pending, f"{name} restarted while {list(self.pending)} is not serving yet"
            self.log.append(name)
            self.next_pid += 1
            self.rings[name] = [self.next_pid, "starting", False]
            self.pending[name] = self.ready_after
            return {"ok": True, "result": {"ring": name, "pid": self.next_pid}}
        assert cmd == "status"
        for name in list(self.pending):
            self.pending[name] -= 1
            if self.pending[name] <= 0 and name != self.never:
                self.rings[name][1] = "running"
                del self.pending[name]
        return {"ok": True, "result": _status({n: tuple(v) for n, v in self.rings.items()})}


def test_rings_are_replaced_one_at_a_time():
    names = ["dom1/dev0/ring0", "dom1/dev0/ring1", "dom2/dev0/ring0"]
    d = Daemon(names)
    out = io.StringIO()
    assert upgrade(d, names, timeout=5, out=out, poll=0) == 3
    assert d.log == names
    assert out.getvalue().splitlines()[0] == "[1/3] dom1/dev0/ring0: pid 100 -> 501"


def test_a_ring_that_does_not_come_back_stops_the_upgrade():
    names = ["dom1/dev0/ring0", "dom1/dev0/ring1"]
    d = Daemon(names, never="dom1/dev0/ring0")
    t = iter(range(1000))
    with pytest.raises(UpgradeFailed, match=r"dom1/dev0/ring0: the new worker is not serving .* 1 ring\(s\) not"):
        upgrade(d, names, timeout=3, out=io.StringIO(), poll=0, clock=lambda: next(t))
    assert d.log == ["dom1/dev0/ring0"]


def test_a_refused_restart_stops_the_upgrade():
    def call(cmd, args):
        if cmd == "restart-ring":
            return {"ok": False, "error": {"code": "no-such-ring", "message": "no running ring"}}
        return {"ok": True, "result": _status({"dom1/dev0/ring0": (1, "running", True)})}
    with pytest.raises(UpgradeFailed, match="restart-ring dom1/dev0/ring0: no running ring"):
        upgrade(call, ["dom1/dev0/ring0"], timeout=1, out=io.StringIO(), poll=0)
