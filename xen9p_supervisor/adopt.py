"""Who owns a worker: adopting the ring workers and device states a previous xen9pd left serving.

Ring workers outlive their daemon (own session, no parent-death signal). When xen9pd starts and finds a
backend that a previous instance left Connected, it looks for that device's state segment in /dev/shm
(named xen9p-<domid>-<devid>-<creator pid>-<seq>, see devstate.segment_name) and for live ring workers
(found in /proc by their command line: `ring --state NAME --ring N ... --supervisor OUR-SOCKET`, and matched
to the segment they map, see mapped_segment). It then
takes the device over as it is: the segment is renamed to carry our pid (so no other daemon sweeps or
adopts it), each live worker becomes a ring of ours watched through a pidfd, and each ring whose worker
died while no daemon ran gets a fresh worker that resumes it through the journal. The device stays
Connected throughout. A worker is only ever adopted by a daemon that serves the same worker socket,
platform and sim dir it was started for; one that then stays silent is a hung worker (heartbeat timeout).

A device state written in a layout this code cannot read is refused, never guessed at: the device is then
closed as before (the guest reconnects with a fresh session) and the old workers are stopped.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from xen9p_common.control import RingSpec
from xen9p_common.errors import Xen9pError
from xen9p_common.procs import pid_alive

from .devstate import SEGMENT, segment_name

if TYPE_CHECKING:
    from .config import Config
    from .device import Device

log = logging.getLogger("xen9pd")


class AdoptRefused(Xen9pError):
    """The previous daemon's device state cannot be taken over (the message says why)."""


# -- live workers ------------------------------------------------------------------------------

_OPTS = {"--platform": "platform", "--sim-dir": "sim_dir", "--domid": "domid", "--devid": "devid",
         "--ring": "ring", "--ring-ref": "ring_ref", "--evtchn": "evtchn", "--state": "state",
         "--export": "export", "--security-model": "security_model", "--supervisor": "supervisor"}


@dataclass(frozen=True)
class LiveWorker:
    """A running ring worker as its command line describes it."""

    pid: int
    start_ticks: int          # /proc/<pid>/stat field 22: tells a reused pid apart
    spec: RingSpec
    platform: str
    sim_dir: str | None


def parse_worker_argv(argv: list[str]) -> dict | None:
    """The options of a `... ring --opt value ...` worker command line, or None if it is not one."""
    if "ring" not in argv:
        return None
    out: dict = {}
    args = argv[argv.index("ring") + 1:]
    for i, a in enumerate(args[:-1]):
        if a in _OPTS:
            out[_OPTS[a]] = args[i + 1]
    try:
        for k in ("domid", "devid", "ring", "ring_ref", "evtchn"):
            out[k] = int(out[k])
        for k in ("platform", "state", "export", "security_model", "supervisor"):
            out[k] = str(out[k])
    except (KeyError, ValueError):
        return None
    return out


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[-1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def mapped_segment(pid: int, domid: int, devid: int, proc: str = "/proc") -> str | None:
    """The name the device state segment a worker has mapped carries now, or None.

    A worker's command line names the segment as it was when the worker started; an adopting xen9pd
    renames it (to carry its pid), so after a second daemon change the name on the command line is
    gone. The mapping follows the file: /proc/<pid>/maps shows its current name.
    """
    try:
        with open(f"{proc}/{pid}/maps", "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(None, 5)  # address perms offset dev inode [path]
        name = os.path.basename(parts[5].strip()) if len(parts) == 6 else ""
        mt = SEGMENT.match(name)
        if mt and (int(mt.group(1)), int(mt.group(2))) == (domid, devid):
            return name
    return None


def find_workers(supervisor: str, platform: str, sim_dir: str | None, proc: str = "/proc") -> list[LiveWorker]:
    """Live ring workers started to report to `supervisor` on this platform (and sim dir); each one's
    state_name is the segment it maps now (see mapped_segment), else its command line's. A process
    is a worker by its title, or, untitled (a wrapped worker_cmd), by the device state it maps."""
    out = []
    me = os.getpid()
    for name in os.listdir(proc):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"{proc}/{name}/cmdline", "rb") as f:
                argv = [os.fsdecode(a) for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if not argv:
            continue
        opts = parse_worker_argv(argv)
        if opts is None or opts["supervisor"] != supervisor or opts["platform"] != platform \
                or opts.get("sim_dir") != sim_dir:
            continue
        pid = int(name)
        ticks = _start_ticks(pid)
        if ticks is None or not pid_alive(pid):
            continue
        mapped = mapped_segment(pid, opts["domid"], opts["devid"], proc)
        # Launcher.spawn titles a worker "xen9p domD/devN/ringR" (argv[0]); a worker_cmd that is a
        # wrapper (env, nice, a script that execs Python) loses the title, so an untitled command
        # line counts only once it maps its device state: a wrapper that stays alive never does.
        if not argv[0].startswith("xen9p dom") and mapped is None:
            continue
        state = mapped or opts["state"]
        spec = RingSpec(opts["domid"], opts["devid"], opts["ring"], opts["ring_ref"], opts["evtchn"],
                        state, opts["export"], opts["security_model"], opts["supervisor"])
        out.append(LiveWorker(pid, ticks, spec, platform, sim_dir))
    return out


class AdoptedProcess:
    """A worker another xen9pd started: not our child, so watched through a pidfd (exit seen, status not).

    Offers the part of subprocess.Popen that RingSet uses: pid, returncode, poll, wait, send_signal.
    """

    def __init__(self, w: LiveWorker) -> None:
        self.pid = w.pid
        self.returncode: int | None = None
        self._fd = os.pidfd_open(w.pid)
        if _start_ticks(w.pid) != w.start_ticks:  # the pid was reused between the scan and the open
            os.close(self._fd)
            raise ProcessLookupError(w.pid)

    def _exited(self) -> None:
        if self.returncode is None:
            self.returncode = 0  # unknown: only its parent (now init) learns the status
            os.close(self._fd)

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._fd], [], [], 0)[0]:
            self._exited()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0.0)
            self._exited()
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            signal.pidfd_send_signal(self._fd, sig)


def _cpu_of(pid: int) -> int | None:
    try:
        cpus = os.sched_getaffinity(pid)
    except OSError:
        return None
    return next(iter(cpus)) if len(cpus) == 1 else None


def _started_wall(pid: int) -> float | None:
    import psutil
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


# -- the adopter --------------------------------------------------------------------------------

class Adopter:
    """What a previous xen9pd left: live workers (scanned once at start) and device state segments."""

    def __init__(self, cfg: "Config", factory, shm_dir: str = "/dev/shm",
                 workers: Iterable[LiveWorker] | None = None) -> None:
        self.cfg = cfg
        self.factory = factory
        self.shm_dir = shm_dir
        self.workers = list(workers) if workers is not None else \
            find_workers(cfg.workers, cfg.platform, cfg.sim_dir)
        self.taken: set[int] = set()
        if self.workers:
            log.info("found %d ring worker(s) of a previous xen9pd still serving: %s", len(self.workers),
                     ", ".join(f"{w.spec.name} pid {w.pid}" for w in self.workers))

    def _segments(self, domid: int, devid: int) -> list[str]:
        """Segments of this device whose creator is gone, newest first."""
        try:
            names = os.listdir(self.shm_dir)
        except OSError:
            return []
        out = []
        for n in names:
            mt = SEGMENT.match(n)
            if mt and (int(mt.group(1)), int(mt.group(2))) == (domid, devid) and not pid_alive(int(mt.group(3))):
                try:
                    out.append((os.stat(os.path.join(self.shm_dir, n)).st_mtime, n))
                except OSError:
                    continue  # freed meanwhile
        return [n for _, n in sorted(out, reverse=True)]

    def adopt(self, dev: "Device") -> bool:
        """Take over a device a previous xen9pd left Connected; False (logged) when it must be closed instead."""
        try:
            self._adopt(dev)
            return True
        except AdoptRefused as e:
            dev.warn("not adopting the previous xen9pd's device: %s", e)
            self._stop_workers_of(dev)
            return False

    def _adopt(self, dev: "Device") -> None:
        from .device import DeviceFailure
        try:
            dev.read_frontend_and_config()
        except DeviceFailure as e:
            raise AdoptRefused(str(e)) from e
        mine = [w for w in self.workers if (w.spec.domid, w.spec.devid) == (dev.domid, dev.devid)
                and w.pid not in self.taken]
        old_name, handle = self._attach_state(dev, {w.spec.state_name for w in mine})
        rings = dev.make_rings(handle.name)
        live = {}
        for w in mine:
            i = w.spec.ring
            if w.spec.state_name == old_name and i < dev.num_rings and \
                    (w.spec.ring_ref, w.spec.evtchn) == (dev.refs[i], dev.ports[i]) and i not in live:
                live[i] = w
        adopted, resumed = [], []
        for r in rings.rings:
            w = live.get(r.spec.ring)
            proc = None
            if w is not None:
                try:
                    proc = AdoptedProcess(w)
                except OSError:
                    proc = None  # it exited since the scan
            if proc is not None:
                self.taken.add(w.pid)
                rings.adopt(r, proc, _cpu_of(w.pid), _started_wall(w.pid))
                adopted.append(f"{r.name} pid {w.pid}")
            else:
                rings.resume(r)
                resumed.append(r.name)
        dev.resume_connected(handle, rings)
        dev.info("adopted from the previous xen9pd: state %s, %d ring(s)%s%s", handle.name, dev.num_rings,
                 f"; serving on: {', '.join(adopted)}" if adopted else "",
                 f"; resuming through the journal: {', '.join(resumed)}" if resumed else "")

    def _attach_state(self, dev: "Device", named_by_workers: set[str]):
        """The device's state: (old name, handle renamed to ours). AdoptRefused when there is none to take."""
        layout = getattr(self.factory, "layout_version", None)
        if layout is None:  # device_state = none: the workers keep no shared state
            old = next(iter(named_by_workers), "")
            if not old:
                raise AdoptRefused("no live worker of it is left and there is no device state to resume from")
            return old, self.factory.create(segment_name(dev.domid, dev.devid))
        # The segment the live workers name wins; then the newest. One that is for another export
        # (another xen9pd's on a shared /dev/shm, e.g. tests) is passed over.
        candidates = sorted(self._segments(dev.domid, dev.devid), key=lambda n: n not in named_by_workers)
        why = "its device state segment is gone"
        for old in candidates:
            found, ours = layout(old)
            if found is None:
                continue
            if found != ours:
                why = (f"its device state {old} has layout version {found}, and this xen9pd reads only layout "
                       f"{ours}: a different xen9p version wrote it. Closing the device instead (the guest "
                       "reconnects with a fresh session)")
                if old in named_by_workers:
                    break
                continue
            try:
                handle = self.factory.attach(old)
            except (OSError, Xen9pError) as e:
                why = f"cannot attach {old}: {e}"
                continue
            if os.path.realpath(handle.export) == os.path.realpath(dev.export) and handle.num_rings == dev.num_rings:
                break
            why = (f"{old} is for export {handle.export} with {handle.num_rings} ring(s), but the device is now "
                   f"{dev.export} with {dev.num_rings}")
            handle.close()
        else:
            raise AdoptRefused(why)
        if found != ours:
            raise AdoptRefused(why)
        new = segment_name(dev.domid, dev.devid)
        try:
            os.rename(os.path.join(self.shm_dir, old), os.path.join(self.shm_dir, new))
        except OSError as e:  # another daemon took it first
            handle.close()
            raise AdoptRefused(f"cannot take {old} over: {e}") from e
        handle.name = new
        return old, handle

    def _stop_workers_of(self, dev: "Device") -> None:
        for w in self.workers:
            if (w.spec.domid, w.spec.devid) == (dev.domid, dev.devid) and w.pid not in self.taken:
                self._terminate(w, "its device is being closed")

    def stop_leftovers(self) -> int:
        """After the first scan: stop live workers no device of ours adopted (their device is gone)."""
        n = 0
        for w in self.workers:
            if w.pid not in self.taken:
                n += self._terminate(w, "no device of ours adopted it")
        self.workers = []
        return n

    def _terminate(self, w: LiveWorker, why: str) -> int:
        self.taken.add(w.pid)
        try:
            proc = AdoptedProcess(w)
        except OSError:
            return 0
        log.info("%s: stopping the previous xen9pd's worker pid %d (%s)", w.spec.name, w.pid, why)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.cfg.kill_grace)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            try:
                proc.wait(self.cfg.kill_grace)
            except subprocess.TimeoutExpired:
                log.warning("%s: worker pid %d survives SIGKILL", w.spec.name, w.pid)
        return 1

