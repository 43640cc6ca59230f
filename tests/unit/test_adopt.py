"""Pieces of daemon restart without guest impact: what SIGTERM means, finding and watching a previous
daemon's workers, device state layout versions, and the segment sweep sparing what a live worker maps."""
from __future__ import annotations

import ast
import mmap
import os
import signal
import subprocess
import sys

import pytest

from xen9p_supervisor import devstate
from xen9p_supervisor.adopt import AdoptedProcess, LiveWorker, _start_ticks, find_workers, parse_worker_argv
from xen9p_supervisor.exit_mode import keep_serving_on_sigterm, systemd_job, systemd_unit
from xen9p_supervisor.workers import Launcher
from xen9p_common.control import RingSpec
from tests.supervisor_fakes import dead_pid
from tests.waiting import wait_for

SYSTEMD = {"INVOCATION_ID": "0123abcd"}


def _never(*_):
    raise AssertionError("systemd must not be asked")


@pytest.mark.parametrize("job,keep", [("restart", True), ("try-restart", True), ("stop", False), (None, False)])
def test_auto_keeps_serving_only_for_a_systemd_restart_job(job, keep):
    assert keep_serving_on_sigterm("auto", SYSTEMD, unit=lambda: "xen9pd.service", job=lambda u: job) is keep


def test_explicit_modes_and_no_systemd_do_not_ask_systemd():
    assert keep_serving_on_sigterm("keep-serving", {}, unit=_never, job=_never) is True
    assert keep_serving_on_sigterm("close", SYSTEMD, unit=_never, job=_never) is False
    assert keep_serving_on_sigterm("auto", {}, unit=_never, job=_never) is False  # not started by systemd


def test_auto_outside_a_service_cgroup_closes():
    assert keep_serving_on_sigterm("auto", SYSTEMD, unit=lambda: None, job=_never) is False


def test_systemd_unit_from_cgroup(tmp_path):
    f = tmp_path / "cgroup"
    f.write_text("0::/system.slice/xen9pd.service\n")
    assert systemd_unit(str(f)) == "xen9pd.service"
    f.write_text("0::/user.slice/user-0.slice/session-3.scope\n")
    assert systemd_unit(str(f)) is None
    assert systemd_unit(str(tmp_path / "missing")) is None


def test_systemd_job_parses_list_jobs():
    out = ("17 xendomains.service stop waiting\n"
           "42 xen9pd.service restart running\n")
    run = lambda argv, **kw: subprocess.CompletedProcess(argv, 0, out, "")  # noqa: E731
    assert systemd_job("xen9pd.service", run) == "restart"
    assert systemd_job("other.service", run) is None

    def broken(argv, **kw):
        raise FileNotFoundError("systemctl")
    assert systemd_job("xen9pd.service", broken) is None


def _spec(state: str = "xen9p-3-0-1-1", sup: str = "ipc:///run/xen9p/workers.sock") -> RingSpec:
    return RingSpec(3, 0, 1, 101, 11, state, "/srv/share", "mapped-xattr", sup)


def test_worker_argv_round_trips_through_the_launcher_command_line():
    argv = Launcher(["/usr/bin/python3", "-m", "xen9p_worker"], "sim", "/tmp/sim", 30.0).argv(_spec())
    opts = parse_worker_argv(["xen9p dom3/dev0/ring1"] + argv[1:])
    assert opts is not None
    got = RingSpec(opts["domid"], opts["devid"], opts["ring"], opts["ring_ref"], opts["evtchn"], opts["state"],
                   opts["export"], opts["security_model"], opts["supervisor"])
    assert got == _spec() and opts["platform"] == "sim" and opts["sim_dir"] == "/tmp/sim"


@pytest.mark.parametrize("argv", [["xen9p", "socket", "--export", "/x"],
                                  ["xen9p dom3/dev0/ring1", "ring", "--domid", "3"],
                                  ["xen9p dom3/dev0/ring1", "ring", "--domid", "x", "--devid", "0"]])
def test_other_command_lines_are_not_workers(argv):
    assert parse_worker_argv(argv) is None


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


@pytest.fixture
def sleeper():
    """A process titled like a ring worker (its argv[0]) with a worker's command line."""
    argv = Launcher([sys.executable, "-c", "import time; time.sleep(60)", "--"], "sim", "/tmp/simx").argv(_spec())
    p = subprocess.Popen(["xen9p dom3/dev0/ring1"] + argv[1:], executable=sys.executable)
    # The child's /proc cmdline can read empty for a moment after the spawn returns.
    wait_for(lambda: _cmdline(p.pid).startswith(b"xen9p dom3/dev0/ring1\0"), 10, "the sleeper's command line")
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


def test_find_workers_matches_socket_platform_and_sim_dir(sleeper):
    def found(sup, plat, sim):
        return [w.pid for w in find_workers(sup, plat, sim)]
    sup = "ipc:///run/xen9p/workers.sock"
    assert sleeper.pid in found(sup, "sim", "/tmp/simx")
    assert sleeper.pid not in found("ipc:///elsewhere.sock", "sim", "/tmp/simx")
    assert sleeper.pid not in found(sup, "xen", None)
    assert sleeper.pid not in found(sup, "sim", "/tmp/other")


def test_a_worker_is_matched_to_its_segment_by_what_it_maps_not_its_command_line(tmp_path):
    """An adopting xen9pd renames the device state segment; the workers' command lines keep the name
    they started with. The next daemon (after a crash of the adopter) must still find which segment each
    maps, or it would restart every worker instead of adopting it."""
    shm = tmp_path / "shm"
    shm.mkdir()
    first = shm / "xen9p-ds-3-0-111-1"
    first.write_bytes(b"\0" * 4096)
    code = (f"import mmap, os, sys, time; f = open({str(first)!r}, 'r+b'); m = mmap.mmap(f.fileno(), 4096); "
            "print('mapped', flush=True); time.sleep(60)")
    argv = Launcher([sys.executable, "-c", code, "--"], "sim", "/tmp/simx").argv(_spec(state=first.name))
    p = subprocess.Popen(["xen9p dom3/dev0/ring1"] + argv[1:], executable=sys.executable, stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"mapped\n"
        wait_for(lambda: _cmdline(p.pid).startswith(b"xen9p dom3/dev0/ring1\0"), 10, "the worker's command line")
        renamed = shm / "xen9p-ds-3-0-222-7"  # what the adopter calls it
        os.rename(first, renamed)
        w = [w for w in find_workers("ipc:///run/xen9p/workers.sock", "sim", "/tmp/simx") if w.pid == p.pid]
        assert len(w) == 1 and w[0].spec.state_name == renamed.name
        assert parse_worker_argv(["xen9p dom3/dev0/ring1"] + argv[1:])["state"] == first.name
    finally:
        p.kill()
        p.wait()


def test_adopted_process_sees_the_exit_and_signals_through_a_pidfd(sleeper):
    w = LiveWorker(sleeper.pid, _start_ticks(sleeper.pid), _spec(), "sim", "/tmp/simx")
    p = AdoptedProcess(w)
    assert p.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        p.wait(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0 and p.poll() == 0  # the status belongs to the real parent
    p.send_signal(signal.SIGKILL)  # after the exit: nothing to signal, no error


def test_adopted_process_refuses_a_reused_pid(sleeper):
    w = LiveWorker(sleeper.pid, _start_ticks(sleeper.pid) + 1, _spec(), "sim", "/tmp/simx")
    with pytest.raises(ProcessLookupError):
        AdoptedProcess(w)


def test_sweep_frees_dead_owners_segments_but_not_mapped_ones(tmp_path):
    dead = dead_pid()
    free, mapped = f"xen9p-ds-5-0-{dead}-1", f"xen9p-ds-5-1-{dead}-2"
    for n in (free, mapped):
        (tmp_path / n).write_bytes(b"\0" * 4096)
    with open(tmp_path / mapped, "r+b") as f:
        m = mmap.mmap(f.fileno(), 4096)
        try:
            # tmp_path stands in for /dev/shm: mapped_segments looks for maps under the given dir.
            assert mapped in devstate.mapped_segments(str(tmp_path))
            assert devstate.sweep_stale_segments(str(tmp_path)) == [free]
        finally:
            m.close()
    assert sorted(os.listdir(tmp_path)) == [mapped]


def test_segments_named_before_adoption_are_still_swept(tmp_path):
    old = f"xen9p-5-0-{dead_pid()}-1"  # an earlier version's leftover
    (tmp_path / old).write_bytes(b"")
    assert devstate.sweep_stale_segments(str(tmp_path)) == [old]


def test_segment_names_carry_the_owner_pid():
    name = devstate.segment_name(4, 2)
    mt = devstate.SEGMENT.match(name)
    assert mt and (int(mt.group(1)), int(mt.group(2)), int(mt.group(3))) == (4, 2, os.getpid())


def test_layout_version_of_a_segment():
    from xen9p_worker.shared.device_state import DeviceState
    name = devstate.segment_name(9, 9)
    ds = DeviceState.create(name, max_fids=16, max_open_files=8, max_space_mb=0, export="/tmp",
                            security_model="none", msize_cap=8192, num_rings=1)
    try:
        assert DeviceState.layout_version(name) == DeviceState.LAYOUT_VERSION
        with open(f"/dev/shm/{name}", "r+b") as f:
            f.seek(8)
            f.write((99).to_bytes(4, "little"))
        assert DeviceState.layout_version(name) == 99
        with open(f"/dev/shm/{name}", "r+b") as f:
            f.write(b"NOTXEN9P")
        assert DeviceState.layout_version(name) is None
    finally:
        ds.close()
        ds.unlink()


def test_an_untitled_worker_is_found_by_the_device_state_it_maps_and_a_wrapper_is_not(tmp_path):
    """worker_cmd may be a wrapper (env, nice, a script that execs Python): the worker then runs
    without the title Launcher gives argv[0]. It is still adopted once it maps its device state; a
    wrapper process that stays alive with the same arguments maps nothing and is not a worker."""
    seg = tmp_path / "xen9p-ds-3-0-111-1"
    seg.write_bytes(b"\0" * 4096)
    code = (f"import mmap, sys, time; f = open({str(seg)!r}, 'r+b'); m = mmap.mmap(f.fileno(), 4096); "
            "print('mapped', flush=True); time.sleep(60)")
    argv = Launcher([sys.executable, "-c", code, "--"], "sim", "/tmp/simx").argv(_spec(state=seg.name))
    idle = Launcher([sys.executable, "-c", "print('up', flush=True); import time; time.sleep(60)", "--"], "sim",
                    "/tmp/simx").argv(_spec(state=seg.name))
    worker = subprocess.Popen(argv, stdout=subprocess.PIPE)      # no title: argv[0] is the interpreter
    wrapper = subprocess.Popen(idle, stdout=subprocess.PIPE)
    try:
        assert worker.stdout.readline() == b"mapped\n" and wrapper.stdout.readline() == b"up\n"
        found = {w.pid: w for w in find_workers("ipc:///run/xen9p/workers.sock", "sim", "/tmp/simx")}
        assert worker.pid in found and found[worker.pid].spec.state_name == seg.name
        assert wrapper.pid not in found
    finally:
        for p in (worker, wrapper):
            p.kill()
            p.wait()


@pytest.mark.parametrize("wrapped", [False, True], ids=["python", "env-wrapper"])
def test_spawned_worker_knows_its_interpreter_whether_or_not_worker_cmd_wraps_it(tmp_path, wrapped):
    """The title replaces argv[0], so xen9pd names the interpreter in PYTHONEXECUTABLE; behind a wrapper
    that would name the wrapper, and the worker would run its lock keeper with `env -m ...`."""
    out = tmp_path / "seen"
    code = f"import os, sys; open({str(out)!r}, 'w').write(repr((sys.executable, os.environ.get('PYTHONEXECUTABLE'))))"
    cmd = (["env"] if wrapped else []) + [sys.executable, "-c", code, "--"]
    p = Launcher(cmd, "sim", "/tmp/simx").spawn(_spec(), None)
    assert p.wait(timeout=30) == 0
    executable, env_value = ast.literal_eval(out.read_text())
    assert os.path.realpath(executable) == os.path.realpath(sys.executable)
    assert env_value == (None if wrapped else sys.executable)
