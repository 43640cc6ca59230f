"""One Device (xen9pd's per-device driver) over the in-process simulated xenstored, with a fake launcher, fake
workers, a fake device-state factory and a fake clock: the handshake, the frontend's close, bad values, worker
crashes and FATAL, the toolstack's detach and a vanished backend. Seconds, no worker processes."""
from __future__ import annotations

import logging
import signal

import pytest

from xen9p_common import control
from xen9p_common.xenbus import DevicePhase, XenbusState, parse_state
from xen9p_sim.toolstack import create_domain
from xen9p_supervisor import toolstack
from xen9p_supervisor.config import Config
from xen9p_supervisor.device import Context, Device
from xen9p_supervisor.workers import CpuAllocator, SpawnError
from tests.integration.xs_fixtures import dom0, xenstored, xs_dir  # noqa: F401
from tests.supervisor_fakes import FakeClock, FakeLauncher, FakeStateFactory

DOMID = 7
CFG = Config(platform="sim", max_rings=4, max_ring_order=6, startsecs=2.0, startretries=1, backoff_initial=0.5,
             backoff_max=1.0, heartbeat_timeout=10.0, ready_timeout=5.0, kill_grace=1.0, close_timeout=10.0)


class World:
    """A device attached by the toolstack, driven by hand: every step is one reconcile, tick or message."""

    def __init__(self, xs, export: str) -> None:
        self.xs = xs
        create_domain(xs, DOMID)
        self.be, self.fe = toolstack.attach(xs, domid=DOMID, path=export, tag="share")
        self.clock = FakeClock()
        self.launcher = FakeLauncher(self.clock)
        self.states = FakeStateFactory()
        self.asked_to_stop: list[str] = []
        self.ctx = Context(xs=xs, cfg=CFG, self_domid=0, launcher=self.launcher, cpus=CpuAllocator([0]),
                           state_factory=self.states, send_stop=lambda r: self.asked_to_stop.append(r.name),
                           clock=self.clock)
        self.dev = Device(self.ctx, "xen_9pfs", DOMID, 0)

    def backend_state(self) -> XenbusState | None:
        return parse_state(self.xs.read(self.be + "/state"))

    def frontend(self, state: XenbusState | None = None, **keys: str) -> None:
        """The guest writes keys (dashes for underscores) and then its state; the backend reconciles."""
        for k, v in keys.items():
            self.xs.write(f"{self.fe}/{k.replace('_', '-')}", v)
        if state is not None:
            self.xs.write(self.fe + "/state", str(int(state)))
        self.dev.reconcile()

    def offer_rings(self, n: int = 2) -> dict[str, str]:
        keys = {"version": "1", "num_rings": str(n)}
        for i in range(n):
            keys[f"ring_ref{i}"], keys[f"event_channel_{i}"] = str(100 + i), str(20 + i)
        return keys

    def ready(self) -> None:
        for r in self.dev.rings.rings:
            self.dev.on_worker_message(r.name, {"type": control.W_READY, "pid": r.proc.pid})

    def connect(self, n: int = 2) -> None:
        self.dev.reconcile()
        self.frontend(XenbusState.Initialised, **self.offer_rings(n))
        self.ready()
        assert self.dev.state is DevicePhase.CONNECTED


@pytest.fixture
def world(dom0, tmp_path):  # noqa: F811
    return World(dom0, str(tmp_path / "export"))


def test_handshake_advertises_then_connects_when_every_worker_is_ready(world):
    world.dev.reconcile()
    assert world.dev.state is DevicePhase.ADVERTISED
    assert world.backend_state() is XenbusState.InitWait
    assert (world.xs.read(world.be + "/versions"), world.xs.read(world.be + "/max-rings"),
            world.xs.read(world.be + "/max-ring-page-order")) == ("1", "4", "6")
    world.frontend(XenbusState.Initialised, **world.offer_rings(2))
    assert world.dev.state is DevicePhase.CONNECTING
    specs = [s for s, _, _ in world.launcher.spawned]
    assert [(s.ring, s.ring_ref, s.evtchn, s.max_ring_order) for s in specs] == [(0, 100, 20, 6), (1, 101, 21, 6)]
    assert [s.state_name for s in specs] == [world.states.created[0].name] * 2
    assert world.states.created[0].params["num_rings"] == 2
    r0 = world.dev.rings.rings[0]
    world.dev.on_worker_message(r0.name, {"type": control.W_READY, "pid": r0.proc.pid})
    assert world.dev.state is DevicePhase.CONNECTING             # one ring is not the device
    assert world.backend_state() is XenbusState.InitWait
    world.ready()
    assert world.dev.state is DevicePhase.CONNECTED and world.backend_state() is XenbusState.Connected
    world.dev.reconcile()                                         # level-triggered: nothing changes
    assert world.dev.state is DevicePhase.CONNECTED and len(world.launcher.procs()) == 2


def test_frontend_closing_then_closed(world):
    world.connect()
    world.frontend(XenbusState.Closing)
    assert world.dev.state is DevicePhase.CLOSING and world.backend_state() is XenbusState.Closing
    assert world.asked_to_stop == ["dom7/dev0/ring0", "dom7/dev0/ring1"]
    assert world.launcher.live() == [] and world.dev.rings is None
    assert world.states.live() != []                              # freed only once the frontend closed
    world.frontend(XenbusState.Closed)
    assert world.dev.state is DevicePhase.CLOSED and world.backend_state() is XenbusState.Closed
    assert world.states.live() == []
    world.frontend(XenbusState.Initialising)                      # the guest reconnects
    assert world.dev.state is DevicePhase.ADVERTISED and world.backend_state() is XenbusState.InitWait


def test_a_frontend_that_never_closes_is_closed_after_the_timeout(world, caplog):
    world.connect()
    world.frontend(XenbusState.Closing)
    assert world.dev.next_deadline() == world.clock() + CFG.close_timeout
    world.clock.advance(CFG.close_timeout - 0.1)
    world.dev.tick()
    assert world.dev.state is DevicePhase.CLOSING
    world.clock.advance(0.2)
    world.dev.tick()
    assert world.dev.state is DevicePhase.CLOSED and world.backend_state() is XenbusState.Closed
    assert "did not reach Closed" in caplog.text and world.states.live() == []


@pytest.mark.parametrize("keys,reason", [
    ({"num_rings": "abc"}, "num-rings 'abc' is not a decimal number"),
    ({"num_rings": "5"}, "num-rings 5 is out of range 1..4"),
    ({"num_rings": "0"}, "num-rings 0 is out of range 1..4"),
    ({"ring_ref1": "0"}, "ring-ref1 0 is out of range"),
    ({"event_channel_0": "-3"}, "event-channel-0 '-3' is not a decimal number"),
    ({"version": "2"}, "frontend version '2' is not one we offered (1)"),
])
def test_a_bad_frontend_value_closes_the_backend_with_the_reason(world, caplog, keys, reason):
    world.dev.reconcile()
    world.frontend(XenbusState.Initialised, **{**world.offer_rings(2), **keys})
    assert world.dev.state is DevicePhase.FAILED and world.backend_state() is XenbusState.Closed
    assert reason in world.dev.fail_reason
    assert f"dom7/dev0: disconnecting: {world.dev.fail_reason}" in caplog.text
    assert world.launcher.spawned == [] and world.states.created == []
    world.dev.reconcile()                                         # the stale frontend is not retried
    assert world.dev.state is DevicePhase.FAILED and world.launcher.spawned == []
    world.frontend(XenbusState.Closed)                            # the guest saw our Closed
    world.frontend(XenbusState.Initialising, **world.offer_rings(1))
    assert world.dev.state is DevicePhase.ADVERTISED


def test_a_missing_ring_key_is_named(world):
    world.dev.reconcile()
    keys = world.offer_rings(2)
    del keys["event_channel_1"]
    world.frontend(XenbusState.Initialised, **keys)
    assert world.dev.fail_reason == "event-channel-1 is missing" and world.backend_state() is XenbusState.Closed


def test_a_bad_toolstack_value_fails_at_attach(world, caplog):
    world.xs.write(world.be + "/security_model", "bogus")
    world.dev.reconcile()
    assert world.dev.state is DevicePhase.FAILED and world.backend_state() is XenbusState.Closed
    assert "security_model 'bogus' is not one of" in world.dev.fail_reason
    assert world.xs.read(world.be + "/versions") is None          # nothing advertised


def test_a_crashed_worker_is_respawned_and_the_device_stays_connected(world):
    world.connect(1)
    first = world.launcher.procs()[0]
    world.clock.advance(CFG.startsecs + 1)
    first.exit(-int(signal.SIGSEGV))
    world.dev.tick()
    assert world.dev.next_deadline() == world.clock() + CFG.backoff_initial
    world.clock.advance(CFG.backoff_initial)
    world.dev.tick()
    assert len(world.launcher.procs()) == 2 and world.dev.state is DevicePhase.CONNECTED
    assert world.backend_state() is XenbusState.Connected and world.dev.restarts() == 1
    assert world.dev.status()["rings"][0]["restarts"] == 1


def test_a_worker_that_keeps_failing_fails_the_device(world, caplog):
    world.connect(1)
    for _ in range(CFG.startretries + 1):
        world.launcher.live()[0].exit(1)
        world.dev.tick()
        world.clock.advance(CFG.backoff_max)
        world.dev.tick()
    assert world.dev.state is DevicePhase.FAILED and world.backend_state() is XenbusState.Closed
    assert world.dev.fail_reason.startswith("dom7/dev0/ring0: worker failed 2 times in a row")
    assert "giving up (FATAL)" in caplog.text
    assert world.dev.rings is None and world.states.live() == []


def test_a_worker_reporting_a_fatal_error_fails_the_device(world):
    world.connect(2)
    r1 = world.dev.rings.rings[1]
    world.dev.on_worker_message(r1.name, {"type": control.W_ERROR, "pid": r1.proc.pid, "fatal": True,
                                          "reason": "ring order 9 exceeds the advertised 6"})
    assert world.dev.state is DevicePhase.FAILED and world.backend_state() is XenbusState.Closed
    assert world.dev.fail_reason == ("dom7/dev0/ring1: worker reports a fatal error: "
                                     "ring order 9 exceeds the advertised 6")
    assert world.launcher.live() == []


def test_a_spawn_failure_fails_the_device(world):
    world.launcher.fail = SpawnError("dom7/dev0/ring0: cannot start worker 'x': No such file")
    world.dev.reconcile()
    world.frontend(XenbusState.Initialised, **world.offer_rings(1))
    assert world.dev.state is DevicePhase.FAILED and "cannot start worker" in world.dev.fail_reason
    assert world.states.live() == []                              # the state created for it is freed


def test_a_device_state_that_cannot_be_created_fails_the_device(world):
    from xen9p_common.errors import Xen9pError
    world.states.fail = Xen9pError("cannot create device state: No space left on device")
    world.dev.reconcile()
    world.frontend(XenbusState.Initialised, **world.offer_rings(1))
    assert world.dev.state is DevicePhase.FAILED and "No space left" in world.dev.fail_reason
    assert world.launcher.spawned == []


def test_toolstack_detach_is_answered_with_closed(world):
    world.connect(1)

    def detach(t):
        t.write(world.be + "/online", "0")
        t.write(world.be + "/state", str(int(XenbusState.Closing)))
    world.xs.transaction(detach)
    world.dev.reconcile()
    assert world.dev.state is DevicePhase.DETACHED and world.backend_state() is XenbusState.Closed
    assert world.launcher.live() == [] and world.states.live() == []
    world.dev.reconcile()                                          # answered: quiet on later rescans
    assert world.dev.state is DevicePhase.DETACHED


def test_a_vanished_backend_is_forgotten_without_writing(world):
    world.connect(1)
    world.xs.rm(world.be)
    world.dev.reconcile()
    assert world.dev.state is DevicePhase.GONE and world.dev.forgotten
    assert world.xs.read(world.be) is None                         # never recreated by a state write
    assert world.launcher.live() == [] and world.states.live() == []


def test_daemon_shutdown_leaves_the_backend_closed(world):
    world.connect(2)
    world.dev.shutdown()
    assert world.backend_state() is XenbusState.Closed
    assert world.launcher.live() == [] and world.states.live() == []


def test_a_backend_state_left_by_a_previous_daemon_is_closed(world, caplog):
    caplog.set_level(logging.INFO, "xen9pd")
    world.xs.write(world.be + "/state", str(int(XenbusState.Connected)))   # no adopter: nothing to adopt
    world.xs.write(world.fe + "/state", str(int(XenbusState.Connected)))
    world.dev.reconcile()
    assert world.dev.state is DevicePhase.CLOSED and world.backend_state() is XenbusState.Closed
    assert "found in state Connected written by a previous backend instance" in caplog.text
    world.frontend(XenbusState.Closed)
    world.frontend(XenbusState.Initialising)                      # the guest reconnects for a fresh session
    assert world.dev.state is DevicePhase.ADVERTISED and world.backend_state() is XenbusState.InitWait
