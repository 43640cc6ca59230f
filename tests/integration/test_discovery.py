"""Discovery's watches and mark-and-sweep rescans over the in-process simulated xenstored, with real Devices on
fake workers: a device appearing, one vanishing between scans, a missed watch caught by the rescan, a domain
released and its leftover backend dir removed."""
from __future__ import annotations

import pytest

from xen9p_common.xenbus import DevicePhase, XenbusState
from xen9p_sim.toolstack import create_domain, destroy_domain
from xen9p_supervisor import toolstack
from xen9p_supervisor.config import Config
from xen9p_supervisor.device import Context, Device
from xen9p_supervisor.discovery import Discovery
from xen9p_supervisor.workers import CpuAllocator
from tests.integration.xs_fixtures import dom0, xenstored, xs_dir  # noqa: F401
from tests.supervisor_fakes import FakeClock, FakeLauncher, FakeStateFactory
from tests.waiting import wait_for

KIND = "xen_9pfs"


class Host:
    def __init__(self, xs, tmp_path) -> None:
        self.xs, self.tmp = xs, tmp_path
        clock = FakeClock()
        self.launcher = FakeLauncher(clock)
        self.states = FakeStateFactory()
        ctx = Context(xs=xs, cfg=Config(platform="sim"), self_domid=0, launcher=self.launcher,
                      cpus=CpuAllocator([0]), state_factory=self.states, clock=clock)
        self.disc = Discovery(xs, 0, [KIND], lambda k, d, v: Device(ctx, k, d, v))

    def attach(self, domid: int, devid: int = 0) -> tuple[str, str]:
        create_domain(self.xs, domid)
        return toolstack.attach(self.xs, domid=domid, devid=devid, kind=KIND, path=str(self.tmp / f"e{domid}"),
                                tag=f"t{domid}")

    def device(self, domid: int, devid: int = 0) -> Device | None:
        return self.disc.devices.get((KIND, domid, devid))

    def events_until(self, cond, what: str):
        """Handle watch events (rescanning when they ask for it) until cond holds."""
        def step():
            if self.disc.handle_events():
                self.disc.rescan()
            return cond()
        return wait_for(step, 5.0, what)


@pytest.fixture
def host(dom0, tmp_path):  # noqa: F811
    h = Host(dom0, tmp_path)
    yield h
    h.disc.stop()


def test_a_device_appearing_is_found_by_its_watch(host):
    host.disc.start()
    host.events_until(lambda: True, "the initial watch events")
    be, fe = host.attach(5)
    dev = host.events_until(lambda: host.device(5), "dom5/dev0 found")
    assert dev.state is DevicePhase.ADVERTISED and host.xs.read(be + "/state") == str(int(XenbusState.InitWait))
    # Its frontend is watched: the guest's Initialised reaches the device without a rescan.
    rescans = host.disc.rescans
    host.xs.write(fe + "/version", "1")
    host.xs.write(fe + "/num-rings", "1")
    host.xs.write(fe + "/ring-ref0", "9")
    host.xs.write(fe + "/event-channel-0", "4")
    host.xs.write(fe + "/state", str(int(XenbusState.Initialised)))
    host.events_until(lambda: dev.state is DevicePhase.CONNECTING, "the frontend's Initialised")
    assert len(host.launcher.procs()) == 1 and host.disc.rescans == rescans


def test_a_rescan_creates_each_device_once(host):
    host.attach(5, 0)
    host.attach(5, 1)
    host.attach(6, 0)
    host.disc.rescan()
    first = dict(host.disc.devices)
    assert sorted(first) == [(KIND, 5, 0), (KIND, 5, 1), (KIND, 6, 0)]
    host.disc.rescan()
    assert host.disc.devices == first                               # same objects: marked, not recreated


def test_a_device_vanishing_between_scans_is_swept(host):
    be, _ = host.attach(5)
    host.attach(6)
    host.disc.rescan()
    gone = host.device(5)
    host.xs.rm(be)                                                  # no watch delivered: only the sweep sees it
    host.disc.rescan()
    assert host.device(5) is None and gone.forgotten and gone.state is DevicePhase.GONE
    assert host.xs.read(be) is None                                 # the sweep wrote nothing back
    assert host.device(6).state is DevicePhase.ADVERTISED


def test_a_missed_watch_is_caught_by_the_rescan(host):
    _, fe = host.attach(5)
    host.disc.rescan()
    dev = host.device(5)
    assert dev.state is DevicePhase.ADVERTISED
    # The frontend closes; its watch event is never handled (lost, coalesced, or the loop was busy).
    host.xs.write(fe + "/state", str(int(XenbusState.Closed)))
    assert dev.state is DevicePhase.ADVERTISED
    host.disc.rescan()
    assert dev.state is DevicePhase.CLOSED


def test_a_released_domain_is_torn_down_and_its_leftover_backend_removed(host):
    host.disc.start()
    be, _ = host.attach(5)
    dev = host.events_until(lambda: host.device(5), "dom5/dev0 found")
    destroy_domain(host.xs, 5)                                      # xl destroy leaves the xen_9pfs dir behind
    host.events_until(lambda: host.device(5) is None, "dom5's device released")
    assert dev.state is DevicePhase.GONE
    assert host.xs.read(be) is None and host.xs.read(f"/local/domain/0/backend/{KIND}/5") is None
    host.disc.rescan()
    assert host.device(5) is None                                   # not adopted again as a new device
