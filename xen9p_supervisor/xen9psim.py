"""`xen9psim`: the simulated Xen toolstack and guest (xenstored, attach, detach, guest, demo).

Everything runs on one machine: a sim directory holds the xenstored socket, guest memory and event channels.
Exit codes: 0 ok, 1 error (or workload errors), 2 usage, 69 xenstore or daemon unreachable.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Sequence

from xen9p_common.errors import Xen9pError, XenStoreError
from xen9p_common.platform import Perm, XenStore

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 69
SECURITY_MODELS = ("none", "passthrough", "mapped-xattr", "mapped-file", "mapped")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("xen9p")
    except Exception:  # noqa: BLE001 - not installed: running from a checkout
        return "0.1.0"


# -- toolstack pieces -----------------------------------------------------------------

def create_domain(xs: XenStore, domid: int, name: str | None = None) -> None:
    """What domain creation leaves behind: XS_INTRODUCE and libxl's domain nodes.

    libxl makes /local/domain/<domid> and its device/ dir owned by dom0 and readable by the
    guest, so a guest can list its own devices but not create siblings.
    """
    introduced = getattr(xs, "is_domain_introduced", None)
    if introduced is None or not introduced(domid):
        xs.introduce_domain(domid)  # type: ignore[attr-defined]
    dom = f"/local/domain/{domid}"
    ro = [Perm("n", 0), Perm("r", domid)]

    def tx(t) -> None:
        for path in (dom, dom + "/device"):
            if t.read(path) is None:
                t.mkdir(path)
            t.set_perms(path, ro)
        if t.read(dom + "/name") is None:
            t.write(dom + "/name", name or f"guest{domid}")
            t.write(dom + "/domid", str(domid))

    xs.transaction(tx)


def destroy_domain(xs: XenStore, domid: int, backend_domid: int = 0) -> None:
    """What `xl destroy` does to xenstore: device backends and the domain's nodes go, then RELEASE."""
    base = f"/local/domain/{backend_domid}/backend"
    try:
        kinds = xs.list(base)
    except XenStoreError:
        kinds = []
    for path in [f"{base}/{k}/{domid}" for k in kinds] + [f"/local/domain/{domid}"]:
        try:
            xs.rm(path)
        except XenStoreError:
            pass  # never existed or already gone
    try:
        xs.release_domain(domid)  # type: ignore[attr-defined]
    except XenStoreError:
        pass


def sim_dir_from(args: argparse.Namespace) -> str:
    d = args.sim_dir or os.environ.get("XEN9P_SIM_DIR")
    if not d:
        raise UsageError("needs --sim-dir or XEN9P_SIM_DIR")
    return os.path.abspath(d)


class UsageError(Xen9pError):
    """A command line that cannot be acted on."""


def dom0_client(sim_dir: str, timeout: float = 10.0) -> XenStore:
    from xen9p_common.platform.sim import sim_paths
    from xen9p_common.platform.xswire import XsWireClient
    return XsWireClient(sim_paths(sim_dir)["xenstored"], timeout=timeout)


def attach_device(xs: XenStore, *, domid: int, path: str, tag: str, kind: str = "xen_9pfs",
                  devid: int = 0, security_model: str = "none", limits: dict | None = None,
                  wait: float = 10.0) -> tuple[str, str]:
    """create_domain + libxl's device nodes; waits (like libxl) for the backend to reach InitWait."""
    from xen9p_common.xenbus import XenbusState

    from . import toolstack
    create_domain(xs, domid)
    be, fe = toolstack.attach(xs, domid=domid, devid=devid, kind=kind, path=path, tag=tag,
                              security_model=security_model, limits=limits)
    if wait > 0:
        st = toolstack.wait_state(xs, be + "/state",
                                  {XenbusState.InitWait, XenbusState.Connected}, wait)
        if st is None:
            raise Xen9pError(f"dom{domid}/dev{devid}: backend did not reach InitWait within {wait} s "
                             f"(is xen9pd running and serving kind {kind}?)")
    return be, fe


# -- commands -------------------------------------------------------------------------

def cmd_xenstored(args: argparse.Namespace) -> int:
    from xen9p_common.platform.sim import xenstored
    argv = ["--socket", args.socket] + (["-v"] if args.verbose else [])
    return xenstored.main(argv)


def _limits(args: argparse.Namespace) -> dict:
    out = {}
    for key in ("max_files", "max_open_files", "max_space"):
        v = getattr(args, key)
        if v is not None:
            out[key] = v
    if args.auto_delete:
        out["auto_delete"] = True
    return out


def cmd_attach(args: argparse.Namespace) -> int:
    sim_dir = sim_dir_from(args)
    xs = dom0_client(sim_dir)
    try:
        be, fe = attach_device(xs, domid=args.domid, devid=args.devid, path=os.path.abspath(args.path),
                               tag=args.tag, kind=args.kind, security_model=args.security_model,
                               limits=_limits(args), wait=args.wait)
    finally:
        xs.close()
    print(f"dom{args.domid}/dev{args.devid}: backend {be}")
    print(f"dom{args.domid}/dev{args.devid}: frontend {fe} (tag {args.tag})")
    return EXIT_OK


def cmd_detach(args: argparse.Namespace) -> int:
    from . import toolstack
    sim_dir = sim_dir_from(args)
    xs = dom0_client(sim_dir)
    try:
        closed = toolstack.detach(xs, domid=args.domid, devid=args.devid, kind=args.kind, timeout=args.timeout)
    finally:
        xs.close()
    if not closed:
        print(f"dom{args.domid}/dev{args.devid}: backend did not reach Closed within {args.timeout} s; "
              "nodes removed anyway (as libxl does)", file=sys.stderr)
        return EXIT_ERROR
    print(f"dom{args.domid}/dev{args.devid}: detached")
    return EXIT_OK


def run_guest(sim_dir: str, domid: int, tag: str, workloads: Sequence[str], *, seed: int = 1, scale: int = 1,
              msize: int | None = None, timeout: float = 10.0, progress=None, on_mounted=None) -> dict:
    """Mount (handshake + Tversion + Tattach), run the workloads in turn, unmount; a summary dict."""
    from xen9p_common.platform.sim.frontend import LINUX_DEFAULT_MSIZE, SimFrontend, mount
    from xen9p_common.platform.sim.workloads import Progress, run_workload

    progress = progress or Progress()
    out: dict = {"domid": domid, "tag": tag, "workloads": [], "ops": 0, "bytes": 0, "seconds": 0.0,
                 "errors": 0, "requests": 0}
    t0 = time.monotonic()
    with SimFrontend(sim_dir, domid, tag, timeout=timeout) as fe:
        client, root = mount(fe, msize=msize or LINUX_DEFAULT_MSIZE)
        out.update(msize=client.msize, rings=len(fe.rings), ring_order=fe.order, devid=fe.devid)
        if on_mounted:
            on_mounted(out)
        try:
            for i, name in enumerate(workloads):
                s = run_workload(name, root, seed=seed + i, scale=scale, progress=progress)
                out["workloads"].append(s.as_dict())
        finally:
            out["requests"] = fe.transport.requests if fe.transport else 0
            try:
                root.clunk()
            except Xen9pError:
                pass
            client.close()
    out["seconds"] = round(time.monotonic() - t0, 3)
    for w in out["workloads"]:
        out["ops"] += w["ops"]
        out["bytes"] += w["bytes"]
        out["errors"] += w["errors"]
    secs = sum(w["seconds"] for w in out["workloads"])
    out["mb_per_s"] = round(out["bytes"] / (1 << 20) / secs, 2) if secs else 0.0
    return out


def cmd_guest(args: argparse.Namespace) -> int:
    from xen9p_common.platform.sim.workloads import WORKLOADS, Progress
    sim_dir = sim_dir_from(args)
    names = [w for w in args.workload.split(",") if w]
    bad = [w for w in names if w not in WORKLOADS]
    if not names or bad:
        raise UsageError(f"unknown workload {', '.join(bad) or '(none)'} (known: {', '.join(WORKLOADS)})")
    progress = Progress()
    stop = threading.Event()

    def report() -> None:
        # Machine-readable progress for `xen9psim demo`, which runs guests as processes.
        while not stop.wait(0.25):
            print(json.dumps({"progress": {"ops": progress.ops, "bytes": progress.bytes,
                                           "errors": progress.errors}}), flush=True)

    def mounted(info: dict) -> None:
        if args.progress:
            print(json.dumps({"mounted": info}), flush=True)

    reporter = threading.Thread(target=report, daemon=True) if args.progress else None
    if reporter:
        reporter.start()
    try:
        summary = run_guest(sim_dir, args.domid, args.tag, names, seed=args.seed, scale=args.scale,
                            msize=args.msize, timeout=args.timeout, progress=progress, on_mounted=mounted)
    finally:
        stop.set()
        if reporter:
            reporter.join()
    if args.json or args.progress:
        print(json.dumps({"summary": summary}), flush=True)
    else:
        print(f"dom{args.domid} tag {args.tag}: msize {summary['msize']}, {summary['rings']} rings "
              f"of order {summary['ring_order']}")
        for w in summary["workloads"]:
            line = (f"  {w['workload']:<9} {w['ops']:>7} ops {w['bytes'] / (1 << 20):>9.1f} MiB "
                    f"{w['seconds']:>7.2f} s {w['mb_per_s']:>8.1f} MB/s {w['errors']:>3} errors")
            print(line)
            for d in w["details"]:
                print(f"    ! {d}")
        print(f"  total: {summary['ops']} ops, {summary['requests']} 9P requests, "
              f"{summary['mb_per_s']} MB/s, {summary['errors']} errors")
    return EXIT_OK if summary["errors"] == 0 else EXIT_ERROR


def cmd_demo(args: argparse.Namespace) -> int:
    return Demo(args).run()


# -- the demo -------------------------------------------------------------------------

# (domid, security model, workloads): two guests with the same tag on different domains.
DEMO_GUESTS = (
    (1, "passthrough", "smoke,fsstress,copy,locks"),
    (2, "mapped-xattr", "smoke,untar,readdir,fsstress"),
)
DEMO_TAG = "demo"
SHM_DIR = "/dev/shm"


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env() -> dict:
    """The environment for processes we start: our package importable, no systemd notify socket."""
    env = dict(os.environ)
    root = _repo_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("NOTIFY_SOCKET", None)
    return env


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (zombies excluded)."""
    import psutil
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.info["pid"]) == pgid:
                out.append(p.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
    return out


class Child:
    """A process we started in its own process group (so Ctrl-C in the terminal does not reach it)."""

    def __init__(self, name: str, argv: list[str], log_path: str, *, pipe_stdout: bool = False) -> None:
        import subprocess
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if pipe_stdout else self._log,
                                     stderr=self._log, env=child_env(), cwd=_repo_root(),
                                     start_new_session=True)
        self.pgid = self.proc.pid

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float) -> list[int]:
        """SIGTERM the group, SIGKILL after `grace`; returns pids that outlived their leader (then killed)."""
        import signal
        import subprocess
        if self.proc.poll() is None:
            try:
                os.killpg(self.pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        left = group_members(self.pgid)
        if left:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return left

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


class GuestProc(Child):
    """`xen9psim guest ... --progress` as a process; a thread reads its JSON lines."""

    def __init__(self, sim_dir: str, domid: int, model: str, workloads: str, seed: int, scale: int) -> None:
        import sys as _sys
        argv = [_sys.executable, "-m", "xen9p_supervisor.xen9psim", "--sim-dir", sim_dir, "guest",
                "--domid", str(domid), "--tag", DEMO_TAG, "--seed", str(seed), "--scale", str(scale),
                "--progress", "run", workloads]
        super().__init__(f"dom{domid}", argv, os.path.join(sim_dir, f"guest{domid}.log"), pipe_stdout=True)
        self.domid, self.model, self.workloads = domid, model, workloads
        self.mounted: dict | None = None
        self.progress: dict = {"ops": 0, "bytes": 0, "errors": 0}
        self.summary: dict | None = None
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"demo-dom{domid}")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if "mounted" in msg:
                self.mounted = msg["mounted"]
            elif "progress" in msg:
                self.progress = msg["progress"]
            elif "summary" in msg:
                self.summary = msg["summary"]

    def finished(self) -> bool:
        return not self.alive() and not self._reader.is_alive()

    def wait_reader(self, timeout: float) -> None:
        self._reader.join(timeout)


class Demo:
    """xenstored + xen9pd + two guests, end to end; leaves no process or shm segment behind."""

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
        child = Child("xenstored", [sys.executable, "-m", "xen9p_supervisor.xen9psim", "xenstored",
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
                           cwd=_repo_root(), timeout=30)
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

    def _progress_line(self, t0: float) -> str:
        parts = []
        for g in self.guests:
            pr = g.summary or g.progress
            state = "done" if g.summary else ("running" if g.mounted else "mounting")
            parts.append(f"dom{g.domid} {g.model}: {pr['ops']} ops {pr['bytes'] / (1 << 20):.1f} MiB "
                         f"{pr['errors']} err ({state})")
        return f"[{time.monotonic() - t0:6.1f}s] " + " | ".join(parts)

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

        from . import toolstack
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
                g = GuestProc(self.sim_dir, domid, model, workloads, self.args.seed + 100 * i, self.args.scale)
                self.children.append(g)
                self.guests.append(g)
            self._deadline_wait(lambda: all(g.mounted or g.finished() for g in self.guests), 30,
                                "both guests to mount")
            for g in self.guests:
                if g.mounted:
                    m = g.mounted
                    self.say(f"  dom{g.domid} mounted: msize {m['msize']}, {m['rings']} rings of order "
                             f"{m['ring_order']}; running {g.workloads}")
            self._note_descendants()
            code, text = self.xen9pctl("status")
            self.say("\n$ xen9pctl status\n" + text.rstrip() + "\n")
            self._watch(t0)
            self._note_descendants()
            self._report()
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
        while not all(g.finished() for g in self.guests):
            now = time.monotonic()
            if now >= deadline:
                raise Xen9pError(f"guests still running after {self.args.timeout} s")
            if tty:
                self.out.write("\r" + self._progress_line(t0)[:200].ljust(120))
                self.out.flush()
            elif not self.args.no_progress and now - last >= 2.0:
                self.say(self._progress_line(t0))
                last = now
            if now - last >= 1.0 and not tty:
                self._note_descendants()
            time.sleep(0.2)  # refresh interval of the progress display
        for g in self.guests:
            g.wait_reader(5)
        if tty:
            self.out.write("\r" + self._progress_line(t0)[:200].ljust(120) + "\n")
        elif not self.args.no_progress:
            self.say(self._progress_line(t0))

    def _report(self) -> None:
        rows = []
        for g in self.guests:
            s = g.summary or {}
            rows.append({"guest": f"dom{g.domid}", "model": g.model, "workloads": g.workloads,
                         "ops": s.get("ops", 0), "requests": s.get("requests", 0),
                         "mib": round(s.get("bytes", 0) / (1 << 20), 1), "mb_per_s": s.get("mb_per_s", 0.0),
                         "errors": s.get("errors", 1) if s else 1,
                         "details": [d for w in s.get("workloads", []) for d in w["details"]]})
        if self.args.json:
            self.say(json.dumps({"guests": rows}))
            return
        self.say(f"\n{'guest':<6} {'model':<13} {'workloads':<30} {'ops':>7} {'9P reqs':>8} {'MiB':>8} "
                 f"{'MB/s':>7} {'errors':>6}")
        for r in rows:
            self.say(f"{r['guest']:<6} {r['model']:<13} {r['workloads']:<30} {r['ops']:>7} {r['requests']:>8} "
                     f"{r['mib']:>8} {r['mb_per_s']:>7} {r['errors']:>6}")
        for r in rows:
            for d in r["details"]:
                self.say(f"  ! {r['guest']} {d}")
        self.say()

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
        for pid, created in self.seen_pids.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    self.leftovers.append(f"process {pid} ({' '.join(p.cmdline()[:3])}) left behind (killed)")
                    p.kill()
            except psutil.Error:
                pass
        pid = self.xen9pd.pid if self.xen9pd else None
        now = set(os.listdir(SHM_DIR)) if os.path.isdir(SHM_DIR) else set()
        for name in sorted(now - shm_before):
            parts = name.split("-")
            # xen9pd names device state xen9p-<domid>-<devid>-<its pid>-<seq>; others' segments are not ours.
            if pid is not None and len(parts) == 5 and parts[0] == "xen9p" and parts[3] == str(pid):
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


# -- argument parsing -----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    sim_help = "directory of the simulated Xen (default: $XEN9P_SIM_DIR; demo: a fresh temp dir)"
    ap = argparse.ArgumentParser(prog="xen9psim", description=__doc__.splitlines()[0])
    ap.add_argument("--sim-dir", default=None, help=sim_help)
    # Accepted after the command too; SUPPRESS so a subcommand does not reset the value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--sim-dir", default=argparse.SUPPRESS, help=sim_help)
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("xenstored", parents=[common], help="run the simulated xenstored")
    p.add_argument("--socket", default=None, help="dom0 socket (default: <sim-dir>/xenstored.sock)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_xenstored)

    p = sub.add_parser("attach", parents=[common], help="create a 9pfs device as libxl does")
    p.add_argument("--domid", type=int, required=True)
    p.add_argument("--devid", type=int, default=0)
    p.add_argument("--path", required=True, help="host directory to export")
    p.add_argument("--tag", required=True, help="mount tag the guest sees")
    p.add_argument("--kind", choices=("9pfs", "xen_9pfs"), default="xen_9pfs")
    p.add_argument("--security-model", choices=SECURITY_MODELS, default="none")
    p.add_argument("--max-files", type=int, default=None)
    p.add_argument("--max-open-files", type=int, default=None)
    p.add_argument("--max-space", type=int, default=None, help="MiB")
    p.add_argument("--auto-delete", action="store_true")
    p.add_argument("--wait", type=float, default=10.0,
                   help="seconds to wait for backend InitWait, as libxl does (0: do not wait)")
    p.set_defaults(fn=cmd_attach)

    p = sub.add_parser("detach", parents=[common], help="online=0, state=5, wait for Closed, remove the nodes")
    p.add_argument("--domid", type=int, required=True)
    p.add_argument("--devid", type=int, default=0)
    p.add_argument("--kind", choices=("9pfs", "xen_9pfs"), default="xen_9pfs")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(fn=cmd_detach)

    p = sub.add_parser("guest", parents=[common], help="a simulated guest: mount a tag and run a workload")
    p.add_argument("--domid", type=int, required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--msize", type=int, default=None, help="requested msize (default Linux's 128 KiB + 24)")
    p.add_argument("--timeout", type=float, default=10.0, help="handshake timeout, seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", type=int, default=1, help="multiply each workload's size")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--progress", action="store_true", help="JSON lines: mounted, progress, summary")
    p.add_argument("action", choices=("run",))
    p.add_argument("workload", help="smoke, fsstress, copy, untar, readdir, locks (comma-separated list)")
    p.set_defaults(fn=cmd_guest)

    p = sub.add_parser("demo", parents=[common], help="xenstored + xen9pd + two guests, end to end")
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the sim dir (and its logs) afterwards")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:
        return int(e.code or 0)
    if not getattr(args, "fn", None):
        ap.print_help(sys.stderr)
        return EXIT_USAGE
    if args.cmd == "xenstored" and not args.socket:
        try:
            from xen9p_common.platform.sim import sim_paths
            args.socket = sim_paths(sim_dir_from(args))["xenstored"]
        except UsageError as e:
            print(f"xen9psim xenstored: {e} (or --socket)", file=sys.stderr)
            return EXIT_USAGE
    try:
        return args.fn(args)
    except UsageError as e:
        print(f"xen9psim {args.cmd}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except XenStoreError as e:
        print(f"xen9psim {args.cmd}: xenstore: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Xen9pError as e:
        print(f"xen9psim {args.cmd}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
