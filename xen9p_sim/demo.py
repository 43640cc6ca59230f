"""`xen9psim demo`: xenstored + xen9pd + two Linux-style guests and a Mini-OS-style one, with a final report.

The cleanup proves that no process or shared-memory segment is left behind (else the demo fails).
With --until-interrupted the guests repeat their workloads until Ctrl-C, and the demo prints one
"guests under way" line once each has done UNDER_WAY_OPS operations: a point where an interrupt
provably lands on work in progress.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from xen9p_common.errors import Xen9pError

from xen9p_supervisor.devstate import segments_of
from xen9p_sim.children import DEMO_TAG, Child, GuestProc, child_env, repo_root
from xen9p_sim.report import progress_line, report_rows, report_table
from xen9p_common.exitcodes import EXIT_ERROR, EXIT_OK
from xen9p_sim.toolstack import attach_device, destroy_domain, dom0_client, sim_dir_from

# (domid, security model, workloads): guests with the same tag on different domains.
DEMO_GUESTS = (
    (1, "passthrough", "smoke,fsstress,copy,locks"),
    (2, "mapped-xattr", "smoke,untar,readdir,fsstress"),
    (3, "none", "minios"),
)
# Guests whose kernel is not Linux: dom3 is a Xenstore-stubdom-like Mini-OS (9P2000.u, one ring of order 4,
# a kexec live update half-way through its workload).
DEMO_FRONTENDS = {3: "minios"}
SHM_DIR = "/dev/shm"
# --until-interrupted: the demo says its guests are under way once each has done this many operations.
UNDER_WAY_OPS = 100


class Demo:
    """xenstored + xen9pd + the DEMO_GUESTS, end to end; leaves no process or shm segment behind."""

    def __init__(self, args: argparse.Namespace, out=None) -> None:
        self.args = args
        self.out = out or sys.stdout
        self.own_dir = not (args.sim_dir or os.environ.get("XEN9P_SIM_DIR"))
        self.sim_dir = ""
        self.children: list[Child] = []
        self.guests: list[GuestProc] = []
        self.xen9pd: Child | None = None
        self.leftovers: list[str] = []
        self.seen_pids: dict[int, float] = {}  # every descendant we saw -> its create time

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # -- pieces ---------------------------------------------------------------------

    def _deadline_wait(self, cond, timeout: float, what: str, proc: Child | None = None):
        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            if proc is not None and not proc.alive():
                raise Xen9pError(f"{proc.name} exited while waiting for {what}:\n{proc.log_tail()}")
            if time.monotonic() >= deadline:
                raise Xen9pError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)  # polling interval of a bounded wait

    def _start_xenstored(self) -> None:
        from xen9p_common.platform.sim import sim_paths
        sock = sim_paths(self.sim_dir)["xenstored"]
        child = Child("xenstored", [sys.executable, "-m", "xen9p_sim.cli", "xenstored",
                                    "--socket", sock], os.path.join(self.sim_dir, "xenstored.log"))
        self.children.append(child)

        def answers() -> bool:
            if not os.path.exists(sock):
                return False
            try:
                with dom0_client(self.sim_dir, timeout=2) as xs:  # type: ignore[attr-defined]
                    return xs.read("/local/domain/0/domid") is not None
            except Xen9pError:
                return False
        self._deadline_wait(answers, 15, "the simulated xenstored", child)

    @property
    def control(self) -> str:
        return f"ipc://{self.sim_dir}/control.sock"

    def _start_xen9pd(self) -> None:
        conf = os.path.join(self.sim_dir, "xen9pd.toml")
        with open(conf, "w") as f:
            for k, v in (("platform", "sim"), ("sim_dir", self.sim_dir), ("control", self.control),
                         ("metrics", f"ipc://{self.sim_dir}/metrics.sock"),
                         ("workers", f"ipc://{self.sim_dir}/workers.sock"), ("log_level", "info")):
                f.write(f"{k} = {json.dumps(v)}\n")
        child = Child("xen9pd", [sys.executable, "-m", "xen9p_supervisor.xen9pd", "--config", conf],
                      os.path.join(self.sim_dir, "xen9pd.log"))
        self.children.append(child)
        self.xen9pd = child
        self._deadline_wait(lambda: self.xen9pctl("ping")[0] == 0, 20, "xen9pd to answer ping", child)

    def xen9pctl(self, *cmd: str) -> tuple[int, str]:
        import subprocess
        r = subprocess.run([sys.executable, "-m", "xen9p_supervisor.xen9pctl", "--control", self.control, *cmd],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, env=child_env(),
                           cwd=repo_root(), timeout=30)
        return r.returncode, r.stdout + r.stderr

    def _note_descendants(self) -> None:
        import psutil
        try:
            for p in psutil.Process().children(recursive=True):
                try:
                    self.seen_pids[p.pid] = p.create_time()
                except psutil.Error:
                    pass
        except psutil.Error:
            pass

    # -- the run ----------------------------------------------------------------------

    def run(self) -> int:
        import signal
        import tempfile
        if self.own_dir:
            self.sim_dir = tempfile.mkdtemp(prefix="xen9psim-demo-")
        else:
            self.sim_dir = sim_dir_from(self.args)
            os.makedirs(self.sim_dir, exist_ok=True)
        shm_before = set(os.listdir(SHM_DIR)) if os.path.isdir(SHM_DIR) else set()
        rc = EXIT_ERROR
        try:
            rc = self._run()
        except KeyboardInterrupt:
            self.say("\ninterrupted: cleaning up")
            rc = 130
        except Xen9pError as e:
            self.say(f"\nxen9psim demo: {e}")
            if self.xen9pd is not None:
                self.say("--- xen9pd log (last lines) ---\n" + self.xen9pd.log_tail(25))
            rc = EXIT_ERROR
        finally:
            # A second Ctrl-C must not cut the cleanup short.
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                clean = self._cleanup(shm_before)
            finally:
                signal.signal(signal.SIGINT, old)
        if not clean and rc == EXIT_OK:
            rc = EXIT_ERROR
        return rc

    def _run(self) -> int:
        from xen9p_common.xenbus import XenbusState

        from xen9p_supervisor import toolstack
        self.say(f"xen9psim demo: simulated Xen in {self.sim_dir}")
        self._start_xenstored()
        self._start_xen9pd()
        self.say(f"  xenstored pid {self.children[0].pid}, xen9pd pid {self.xen9pd.pid} "
                 f"(control {self.control})")
        xs = dom0_client(self.sim_dir)
        try:
            for domid, model, _ in DEMO_GUESTS:
                export = os.path.join(self.sim_dir, f"export-{model}")
                os.makedirs(export, exist_ok=True)
                attach_device(xs, domid=domid, path=export, tag=DEMO_TAG, security_model=model)
                self.say(f"  attached dom{domid}/dev0 tag {DEMO_TAG!r}: {export} ({model})")
            t0 = time.monotonic()
            for i, (domid, model, workloads) in enumerate(DEMO_GUESTS):
                g = GuestProc(self.sim_dir, domid, model, workloads, self.args.seed + 100 * i, self.args.scale,
                              frontend=DEMO_FRONTENDS.get(domid, "linux"),
                              rounds=0 if self.args.until_interrupted else 1)
                self.children.append(g)
                self.guests.append(g)
            self._deadline_wait(lambda: all(g.mounted or g.finished() for g in self.guests), 30,
                                "every guest to mount")
            for g in self.guests:
                if g.mounted:
                    m = g.mounted
                    self.say(f"  dom{g.domid} mounted ({g.frontend}, {m.get('version', '9P2000.L')}): msize "
                             f"{m['msize']}, {m['rings']} rings of order {m['ring_order']}; running {g.workloads}")
            self._note_descendants()
            code, text = self.xen9pctl("status")
            self.say("\n$ xen9pctl status\n" + text.rstrip() + "\n")
            self._watch(t0)
            self._note_descendants()
            rows = report_rows(self.guests)
            self.say(json.dumps({"guests": rows}) if self.args.json else "\n".join(report_table(rows)))
            for domid, _, _ in DEMO_GUESTS:
                closed = toolstack.detach(xs, domid=domid, devid=0, kind="xen_9pfs", timeout=10)
                self.say(f"  detached dom{domid}/dev0: backend {'Closed' if closed else 'did NOT reach Closed'}")
                if not closed:
                    self.leftovers.append(f"dom{domid}/dev0 backend did not reach {XenbusState.Closed.name}")
                destroy_domain(xs, domid)
        finally:
            xs.close()
        errors = sum((g.summary or {"errors": 1})["errors"] for g in self.guests)
        failed = [g for g in self.guests if g.proc.returncode != 0 or g.summary is None]
        for g in failed:
            self.say(f"  dom{g.domid} guest exited {g.proc.returncode}:\n{g.log_tail()}")
        return EXIT_OK if errors == 0 and not failed and not self.leftovers else EXIT_ERROR

    def _watch(self, t0: float) -> None:
        tty = self.out.isatty() and not self.args.no_progress
        last = 0.0
        deadline = t0 + self.args.timeout
        under_way = not self.args.until_interrupted  # said already (or nothing to say)
        while not all(g.finished() for g in self.guests):
            now = time.monotonic()
            if now >= deadline:
                raise Xen9pError(f"guests still running after {self.args.timeout} s")
            if not under_way and all(g.progress["ops"] >= UNDER_WAY_OPS and g.alive() for g in self.guests):
                under_way = True
                ops = ", ".join(f"dom{g.domid} {g.progress['ops']} ops" for g in self.guests)
                self.say(("\n" if tty else "") + f"  guests under way: {ops}; they keep going until Ctrl-C")
            if tty:
                self.out.write("\r" + progress_line(self.guests, t0)[:200].ljust(120))
                self.out.flush()
            elif not self.args.no_progress and now - last >= 2.0:
                self.say(progress_line(self.guests, t0))
                last = now
            if now - last >= 1.0 and not tty:
                self._note_descendants()
            time.sleep(0.2)  # refresh interval of the progress display
        for g in self.guests:
            g.wait_reader(5)
        if tty:
            self.out.write("\r" + progress_line(self.guests, t0)[:200].ljust(120) + "\n")
        elif not self.args.no_progress:
            self.say(progress_line(self.guests, t0))

    def _cleanup(self, shm_before: set[str]) -> bool:
        import psutil
        import shutil
        self._note_descendants()
        # Guests first (they hold grants), then the daemon (it closes devices), then xenstored.
        order = [c for c in self.children if isinstance(c, GuestProc)] + \
                [c for c in self.children if c is self.xen9pd] + \
                [c for c in self.children if not isinstance(c, GuestProc) and c is not self.xen9pd]
        for c in order:
            left = c.stop(grace=15.0 if c is self.xen9pd else 5.0)
            if left:
                self.leftovers.append(f"{c.name}: processes {left} outlived it (killed)")
        alive = []
        for pid, created in self.seen_pids.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        # A device's lock keeper ends on its own once xen9pd freed the device: allow it a moment.
        _, alive = psutil.wait_procs(alive, timeout=3.0)
        for p in alive:
            try:
                self.leftovers.append(f"process {p.pid} ({' '.join(p.cmdline()[:3])}) left behind (killed)")
                p.kill()
            except psutil.Error:
                pass
        pid = self.xen9pd.pid if self.xen9pd else None
        now = set(os.listdir(SHM_DIR)) if os.path.isdir(SHM_DIR) else set()
        ours = segments_of(pid, SHM_DIR) if pid is not None else set()  # others' segments are not ours
        for name in sorted(now - shm_before):
            if name in ours:
                self.leftovers.append(f"shared memory {SHM_DIR}/{name} left behind (removed)")
                try:
                    os.unlink(os.path.join(SHM_DIR, name))
                except OSError:
                    pass
        if self.own_dir and not self.args.keep:
            shutil.rmtree(self.sim_dir, ignore_errors=True)
        elif self.args.keep:
            self.say(f"  kept {self.sim_dir} (logs: xen9pd.log, xenstored.log, guest*.log)")
        if self.leftovers:
            for what in self.leftovers:
                self.say(f"  LEFT BEHIND: {what}")
            return False
        if self.children:
            self.say("  stopped every process; no process or shared-memory segment left behind")
        return True
