"""The 9P servers the guest kernel mounts: diod (for comparison) and xen9p's socket transport.
Each runs as a child process listening on a Unix socket, stopped by process group."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from xen9p_common.errors import Xen9pError

from .guest_image import TEST_UIDS

REPO_ROOT = Path(__file__).resolve().parents[3]
DIOD = Path("/usr/sbin/diod")
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


class ServerStartError(Xen9pError):
    """The server under test did not come up on its socket."""


@dataclass
class ServerSpec:
    name: str
    argv: list[str]
    socket_path: Path
    export: Path
    mount_opts: str     # 9p mount options after trans=fd,rfdno,wfdno
    log_path: Path
    cwd: Path | None = None
    env: dict[str, str] | None = None
    scratch: list[Path] = field(default_factory=list)   # removed when the server stops


@dataclass
class RunningServer:
    spec: ServerSpec
    proc: subprocess.Popen
    started_s: float
    _log: object = field(default=None, repr=False)

    def stop(self) -> int | None:
        """SIGTERM the whole process group, then SIGKILL after a grace period; returns the exit code."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
        for path in self.spec.scratch:
            shutil.rmtree(path, ignore_errors=True)
        return self.proc.returncode


def start_server(spec: ServerSpec) -> RunningServer:
    spec.export.mkdir(parents=True, exist_ok=True)
    spec.socket_path.unlink(missing_ok=True)
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(spec.log_path, "w", encoding="utf-8")
    t0 = time.monotonic()
    proc = subprocess.Popen(spec.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            cwd=spec.cwd, env=spec.env, start_new_session=True)
    server = RunningServer(spec, proc, t0, log)
    deadline = t0 + START_TIMEOUT_S
    while not spec.socket_path.is_socket():
        try:
            # waiting on the child doubles as the poll interval and notices an early exit
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = spec.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise ServerStartError(f"{spec.name} did not listen on {spec.socket_path}: {' | '.join(tail)}")
    return server


def diod_spec(workdir: Path) -> ServerSpec | str:
    """diod with no auth and a private passwd/group that knows the guest's test uids."""
    if not DIOD.exists():
        return "diod is not installed"
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return "diod needs root and unshare for its private passwd/group"
    etc = workdir / "diod-etc"
    etc.mkdir(parents=True, exist_ok=True)
    extra_users = "".join(f"t{u}:x:{u}:{u}::/nonexistent:/usr/sbin/nologin\n" for u in TEST_UIDS)
    extra_groups = "".join(f"t{u}:x:{u}:\n" for u in TEST_UIDS)
    (etc / "passwd").write_text(_without_ids(Path("/etc/passwd").read_text(), TEST_UIDS, 2) + extra_users)
    (etc / "group").write_text(_without_ids(Path("/etc/group").read_text(), TEST_UIDS, 2) + extra_groups)
    # diod checks the kernel's first attach as user nobody, so every directory above the export
    # must be searchable by others; pytest's and mkdtemp's 0700 directories are not.
    top = Path(tempfile.mkdtemp(prefix="xen9p-diod-", dir="/var/tmp"))
    top.chmod(0o755)
    export, sock = top / "export", workdir / "diod.sock"
    # -c /dev/null ignores /etc/diod.conf; no -N: without the user db diod refuses the kernel's
    # first attach (uname nobody, n_uname ~0). The bind mounts live only in diod's namespace.
    inner = (f"mount --bind {etc}/passwd /etc/passwd && mount --bind {etc}/group /etc/group && "
             f"exec {DIOD} -f -n -c /dev/null -e {export} -l {sock} -L stderr")
    return ServerSpec(name="diod", argv=["unshare", "-m", "sh", "-c", inner], socket_path=sock, export=export,
                      mount_opts=f"version=9p2000.L,msize=65536,aname={export}",
                      log_path=workdir / "diod.log", scratch=[top])


def _without_ids(text: str, ids: tuple[int, ...], col: int) -> str:
    keep = [ln for ln in text.splitlines() if not (len(ln.split(":")) > col and ln.split(":")[col] in map(str, ids))]
    return "\n".join(keep) + "\n"


def xen9p_unavailable() -> str | None:
    """None when `python3 -m xen9p_worker --help` works; otherwise the skip reason."""
    try:
        out = subprocess.run([sys.executable, "-m", "xen9p_worker", "--help"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "xen9p socket transport not available"
    if out.returncode != 0 or "--listen" not in out.stdout:
        return "xen9p socket transport not available"
    return None


def xen9p_spec(workdir: Path) -> ServerSpec | str:
    reason = xen9p_unavailable()
    if reason:
        return reason
    export, sock = workdir / "export-xen9p", workdir / "xen9p.sock"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return ServerSpec(name="xen9p",
                      argv=[sys.executable, "-m", "xen9p_worker", "--listen", f"unix:{sock}",
                            "--export", str(export), "--security-model", "passthrough",
                            "--log-level", os.environ.get("XEN9P_KERNEL_LOG_LEVEL", "info")],
                      socket_path=sock, export=export, mount_opts="version=9p2000.L,msize=512000",
                      log_path=workdir / "xen9p.log", cwd=REPO_ROOT, env=env)


SERVER_SPECS = {"diod": diod_spec, "xen9p": xen9p_spec}
