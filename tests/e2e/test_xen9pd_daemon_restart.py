"""xen9pd exits or dies while guests work; the next xen9pd adopts the ring workers (adopt.py).

SIGKILL and a systemctl-style restart (SIGTERM in keep-serving mode) mid-workload: no guest-visible error,
no lost or duplicated write, no device leaves Connected. A worker that died while no daemon ran resumes
through the journal; an adopted worker that stays silent is restarted like a hung one; a device state of
another layout is refused (the device is closed, the guest reconnects); `systemctl stop` (SIGTERM in
close mode) still closes every device.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from tests.e2e.real_guest import DEADLINE, Load, RealGuest, World, ring, shut_down
from tests.e2e.xen9pd_helpers import ROOT, env_for_children
from tests.waiting import wait_for
from xen9p_sim.client import ClientError
from xen9p_common.xenbus import XenbusState
from xen9p_supervisor.devstate import segments_of
from xen9p_worker.shared.layout import LAYOUT_VERSION


@pytest.fixture
def world():
    w = World("dre")
    yield w
    w.close()


def _ring_pids(daemon, dev: str) -> dict[str, int | None]:
    return {r["name"]: r["pid"] for r in daemon.device(dev)["rings"]}


def _serving(daemon, dev: str) -> bool:
    d = daemon.device(dev)
    return bool(d and d["state"] == "connected" and d["rings"]
                and all(r["pid"] and r["state"] == "running" for r in d["rings"]))


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: its parent, init here, reaps it when it gets to it)."""
    from xen9p_common.procs import pid_alive
    return not pid_alive(pid)


def _wait(daemon, cond, what: str) -> None:
    """wait_for, with the daemon's log in the failure message."""
    try:
        wait_for(cond, DEADLINE, what)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- xen9pd log ---\n{daemon.logs()[-4000:]}") from None


def _finish(load: Load, guests: list[RealGuest]) -> None:
    load.stop()
    assert not load.errors, load.errors
    assert not load.stray, f"replies for tags not outstanding (answered twice?): {load.stray[:20]}"
    assert load.sent == load.replies, f"{load.sent} requests sent, {load.replies} replies"


@pytest.mark.parametrize("how", ["sigkill", "restart"])
def test_daemon_killed_or_restarted_mid_workload_is_invisible_to_guests(how):
    """SIGKILL, or SIGTERM with on_sigterm=keep-serving (what `systemctl restart` gets under on_sigterm=auto)."""
    world = World("drk", on_sigterm="keep-serving" if how == "restart" else "auto")
    old = world.daemon
    guests = [RealGuest(world, 20 + i, tag=f"g{i}").mount() for i in range(3)]
    loads = [Load(g.client, g.root, threads=2, burst=16, files=2).start() for g in guests]
    try:
        for ld in loads:
            ld.wait_ops(100, "workload under way")
        workers = {g.name: _ring_pids(old, g.name) for g in guests}
        for ld in loads:
            ld.reset_latency()
        t0 = time.monotonic()
        if how == "sigkill":
            old.stop(signal.SIGKILL)
        else:
            assert old.stop(signal.SIGTERM) == 0
            assert "exited for a restart: 3 device(s) left serving with 6 ring worker(s)" in old.logs()
        for ld in loads:  # no daemon at all: the guests' I/O goes on
            ld.wait_ops(50, "workload progressing with no xen9pd")
        new = world.start_daemon(on_sigterm="auto")  # so that the end of the test closes everything
        for g in guests:
            _wait(new, lambda g=g: _serving(new, g.name), f"{g.name} adopted")
        away = time.monotonic() - t0
        for g in guests:
            # The same processes serve on: adopted, not restarted.
            assert _ring_pids(new, g.name) == workers[g.name]
            assert f"{g.name}: adopted from the previous xen9pd" in new.logs()
        for ld in loads:
            ld.wait_ops(100, "workload progressing under the new xen9pd")
        latency = max(ld.max_latency for ld in loads)
        for ld, g in zip(loads, guests):
            _finish(ld, [g])
            assert ld.verify_files(g.export) > 0
            assert not g.fe.backend_closed.is_set(), f"{g.name}: the frontend saw its backend leave Connected"
            assert g.be_state() == XenbusState.Connected
            assert g.works("after")
        assert "Closing" not in new.logs() and "Closed" not in new.logs()
        print(f"\n[{how}] daemon away {away:.2f}s (kill -> every device adopted); longest guest request "
              f"latency meanwhile {latency * 1000:.1f} ms; files verified "
              f"{sum(len(ld.files) for ld in loads)}")
        # A second change of daemon: the adopter (which renamed the device state segments) is killed
        # too; the next one still finds every worker's segment (by what it maps) and adopts them again.
        new.stop(signal.SIGKILL)
        new = world.start_daemon(on_sigterm="auto")
        for g in guests:
            _wait(new, lambda g=g: _serving(new, g.name), f"{g.name} adopted a second time")
            assert _ring_pids(new, g.name) == workers[g.name]
        assert "resuming through the journal" not in new.logs()
        for g in guests:
            assert g.works("after-second-adoption")
        # The adopted workers are ours now: a SIGKILLed one is restarted through the journal as usual.
        name = f"{guests[0].name}/ring0"
        pid = ring(new, name)["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: ring(new, name)["pid"] not in (None, pid) and ring(new, name)["state"] == "running",
                 DEADLINE, f"{name} restarted")
        assert guests[0].works("after-restart")
    finally:
        shut_down(loads, guests, world)


def test_worker_that_died_while_no_daemon_ran_resumes_through_the_journal(world):
    g = RealGuest(world, 30).mount()
    load = Load(g.client, g.root, threads=2, burst=16, files=2).start()
    try:
        load.wait_ops(100, "workload under way")
        old_pids = _ring_pids(world.daemon, g.name)
        world.daemon.stop(signal.SIGKILL)
        dead = old_pids[f"{g.name}/ring1"]
        os.kill(dead, signal.SIGKILL)
        new = world.start_daemon()
        _wait(new, lambda: _serving(new, g.name), "device serving again")
        pids = _ring_pids(new, g.name)
        assert pids[f"{g.name}/ring0"] == old_pids[f"{g.name}/ring0"]
        assert pids[f"{g.name}/ring1"] not in (None, dead)
        assert f"resuming through the journal: {g.name}/ring1" in new.logs()
        load.wait_ops(100, "workload progressing")
        _finish(load, [g])
        load.verify_files(g.export)
        assert not g.fe.backend_closed.is_set()
    finally:
        load._stop.set()
        g.close()


def test_adopted_worker_that_does_not_answer_is_restarted_like_a_hung_one():
    w = World("drh", heartbeat_timeout=2.0, kill_grace=0.5)
    g = None
    try:
        g = RealGuest(w, 31).mount()
        assert g.works()
        old_pids = _ring_pids(w.daemon, g.name)
        w.daemon.stop(signal.SIGKILL)
        stuck = old_pids[f"{g.name}/ring0"]
        os.kill(stuck, signal.SIGSTOP)  # alive, but silent
        new = w.start_daemon()
        name = f"{g.name}/ring0"
        _wait(new, lambda: ring(new, name)["pid"] not in (None, stuck) and ring(new, name)["state"] == "running",
              "the silent adopted worker replaced")
        assert f"{name}: worker pid {stuck} silent for" in new.logs()
        assert g.works("after")
        assert not g.fe.backend_closed.is_set()
        wait_for(lambda: _gone(stuck), DEADLINE, "the silent worker gone")
    finally:
        if g is not None:
            g.close()
        w.close()


def test_device_state_of_another_layout_is_refused_and_the_device_closed(world):
    g = RealGuest(world, 32).mount()
    try:
        assert g.works()
        old = world.daemon
        old_pids = _ring_pids(old, g.name)
        (seg,) = segments_of(old.proc.pid)
        old.stop(signal.SIGKILL)
        with open(f"/dev/shm/{seg}", "r+b") as f:  # what an older or newer xen9p's layout looks like
            f.seek(8)
            f.write(struct.pack("<I", 99))
        new = world.start_daemon()
        g.wait_closed()
        assert g.fe.backend_closed.wait(DEADLINE)
        assert (f"{g.name}: not adopting the previous xen9pd's device: its device state {seg} has layout version "
                f"99, and this xen9pd reads only layout {LAYOUT_VERSION}") in new.logs(), new.logs()
        for pid in old_pids.values():  # the old workers are stopped, never left serving beside a new session
            wait_for(lambda pid=pid: _gone(pid), DEADLINE, f"old worker {pid} stopped")
        with pytest.raises(ClientError):
            g.root.getattr()
        g.remount()
        assert g.works("again")
    finally:
        g.close()


def test_stop_closes_connected_devices_and_guests_reconnect(world):
    """`systemctl stop` (SIGTERM, on_sigterm auto outside a systemd restart job): today's behaviour."""
    old = world.daemon
    a = RealGuest(world, 7).mount()
    b = RealGuest(world, 8, tag="other").mount()
    try:
        assert a.works() and b.works()
        old_pid = old.proc.pid
        assert segments_of(old_pid)
        old.stop(signal.SIGTERM)
        for g in (a, b):
            assert g.be_state() == XenbusState.Closed
            assert g.fe.backend_closed.wait(DEADLINE), f"{g.name}: frontend did not see Closed"
            with pytest.raises(ClientError):
                g.root.getattr()
        assert not segments_of(old_pid), "the stopped daemon's device state was not freed"
        world.start_daemon()
        for g in (a, b):
            g.remount()
            assert g.be_state() == XenbusState.Connected
            assert g.works("again")
    finally:
        a.close()
        b.close()


def test_stale_backend_whose_export_went_away_fails_closed_and_others_are_adopted(world):
    """A device whose keys no longer hold is not adopted: Closed with its reason, its workers stopped;
    the other device is adopted."""
    a = RealGuest(world, 11).mount()
    b = RealGuest(world, 12, tag="other").mount()
    try:
        assert a.works() and b.works()
        world.daemon.stop(signal.SIGKILL)
        os.rename(a.export, a.export + ".moved")  # the toolstack's path is no directory when the daemon returns
        with open(a.export, "w"):
            pass  # (a missing one would be created again for this kind, xen_9pfs, as xen-9pfsd does)
        new = world.start_daemon()
        wait_for(lambda: a.be_state() == XenbusState.Closed, DEADLINE, f"{a.name} closed by the new daemon")
        dev = new.device("dom11/dev0")
        assert "is not a directory on this host" in dev["error"] and dev["backend_state"] == "Closed"
        assert f"dom11/dev0: disconnecting: export {a.export} is not a directory on this host" in new.logs()
        _wait(new, lambda: _serving(new, b.name), f"{b.name} adopted")
        assert b.works("again") and not b.fe.backend_closed.is_set()
    finally:
        a.close()
        b.close()


def test_second_daemon_while_the_first_serves_exits_69_and_adopts_nothing(world):
    g = RealGuest(world, 13).mount()
    try:
        assert g.works()
        pids = _ring_pids(world.daemon, g.name)
        r = subprocess.run([sys.executable, "-m", "xen9p_supervisor.xen9pd", "--config", world.daemon.config_path],
                           capture_output=True, text=True, cwd=ROOT, env=env_for_children(), timeout=60)
        assert r.returncode == 69, r.stderr
        assert "another xen9pd already answers" in r.stderr
        assert _ring_pids(world.daemon, g.name) == pids
        assert g.works("still") and not g.fe.backend_closed.is_set()
    finally:
        g.close()


def _build2(world) -> str:
    """A second build of the worker code in its own directory, and a worker command that runs it."""
    import shutil

    import xen9p_common
    import xen9p_worker
    build = os.path.join(world.dir, "build2")
    for pkg in (xen9p_worker, xen9p_common):
        src = os.path.dirname(pkg.__file__)
        shutil.copytree(src, os.path.join(build, os.path.basename(src)),
                        ignore=shutil.ignore_patterns("__pycache__"))
    code = (f"import sys, runpy; sys.path.insert(0, {build!r}); "
            "runpy.run_module('xen9p_worker', run_name='__main__', alter_sys=True)")
    return f"{sys.executable} -c \"{code}\""


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def test_restart_then_rolling_upgrade_to_another_build_is_invisible_to_guests():
    """Package upgrade: restart (workers adopted, old code), then `xen9pctl upgrade` moves each ring onto
    the new build one at a time under a verified workload."""
    from tests.e2e.real_guest import xen9pctl
    world = World("dru", on_sigterm="keep-serving")
    guests = [RealGuest(world, 40 + i, tag=f"u{i}").mount() for i in range(2)]
    loads = [Load(g.client, g.root, threads=2, burst=16, files=2).start() for g in guests]
    try:
        for ld in loads:
            ld.wait_ops(100, "workload under way")
        old = {g.name: _ring_pids(world.daemon, g.name) for g in guests}
        assert world.daemon.stop(signal.SIGTERM) == 0
        new = world.start_daemon(on_sigterm="auto", worker_cmd=_build2(world))
        for g in guests:
            _wait(new, lambda g=g: _serving(new, g.name), f"{g.name} adopted")
        assert all(r["adopted"] for g in guests for r in new.device(g.name)["rings"])
        for ld in loads:
            ld.reset_latency()
        r = xen9pctl(new, "upgrade", timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr + new.logs()[-3000:]
        names = [f"{g.name}/ring{i}" for g in guests for i in range(2)]
        assert [ln.split()[1].rstrip(":") for ln in r.stdout.splitlines() if ln.startswith("[")] == names
        # One ring at a time: each restart is requested only after the previous ring serves again.
        log = new.logs()
        for prev, nxt in zip(names, names[1:]):
            assert log.index(f"{prev}: worker pid") < log.index(f"{nxt}: restart requested by the operator")
        for g in guests:
            for name, pid in _ring_pids(new, g.name).items():
                assert pid != old[g.name][name] and "build2" in _cmdline(pid), name
            assert not any(r["adopted"] for r in new.device(g.name)["rings"])
        for ld in loads:
            ld.wait_ops(100, "workload progressing on the new build")
        latency = max(ld.max_latency for ld in loads)
        for ld, g in zip(loads, guests):
            _finish(ld, [g])
            assert ld.verify_files(g.export) > 0
            assert not g.fe.backend_closed.is_set() and g.be_state() == XenbusState.Connected
        assert xen9pctl(new, "upgrade").stdout.startswith("xen9pctl: upgrade: no ring to replace")
        print(f"\n[upgrade] {len(names)} rings replaced one at a time; longest guest request latency during the "
              f"upgrade {latency * 1000:.1f} ms")
    finally:
        shut_down(loads, guests, world)
