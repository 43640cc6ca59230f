"""Acceptance fixtures: start a 9P server as a real process on a Unix socket and connect our client.

Servers: xen9p (`python -m xen9p_worker`) in each security model, and Debian's diod as a peer.
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xen9p_common.client import Client, Fid, SocketTransport

DIOD = "/usr/sbin/diod"
MODELS = ("passthrough", "none", "mapped-xattr", "mapped-file")
SERVERS = tuple(f"xen9p-{m}" for m in MODELS) + ("diod",)
MSIZE = 65536  # diod's cap: compare the two servers at the same msize
START_DEADLINE = 15.0
REPO = Path(__file__).resolve().parents[2]


def pytest_configure(config):
    config.addinivalue_line("markers", "xen9p_only(reason): needs xen9p semantics or extensions (skipped on diod)")
    config.addinivalue_line("markers", "models(*names): runs only on xen9p in these security models")
    config.addinivalue_line("markers", "diod_differs(reason): diod behaves differently here (strict xfail on diod)")


@dataclass
class Server:
    kind: str  # "xen9p" or "diod"
    model: str | None  # security model for xen9p
    export: Path
    socket: Path
    proc: subprocess.Popen
    log: Path
    _dirs: itertools.count = field(default_factory=itertools.count)

    @property
    def name(self) -> str:
        return f"xen9p-{self.model}" if self.kind == "xen9p" else self.kind

    @property
    def outside(self) -> Path:
        """A directory next to the export holding SECRET: never reachable through 9P."""
        return self.export.parent / "outside"

    @property
    def mapped(self) -> bool:
        return self.model in ("mapped-xattr", "mapped-file")

    def connect(self, msize: int = MSIZE, timeout: float = 10.0) -> Client:
        """A new connection with Tversion done (no attach)."""
        c = Client(SocketTransport.connect_unix(str(self.socket)), timeout=timeout, name=self.name)
        try:
            c.version(msize)
        except BaseException:
            c.close()
            raise
        return c

    def attach(self, client: Client) -> Fid:
        return client.attach(str(self.export), "root", 0)

    def new_dir(self) -> Path:
        """A fresh directory in the export for one test (tests share the server)."""
        d = self.export / f"t{next(self._dirs)}"
        d.mkdir()
        return d

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def _wait_for_socket(proc: subprocess.Popen, path: Path, log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        time.sleep(0.02)  # polling a condition (the socket file) with a deadline
    proc.kill()
    raise RuntimeError(f"server did not create {path} within {START_DEADLINE} s:\n{log.read_text()}")


def _xen9p_available() -> str | None:
    """None if `python -m xen9p_worker` can serve a socket, else the reason it cannot."""
    r = subprocess.run([sys.executable, "-m", "xen9p_worker", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or "--listen" not in r.stdout:
        return "xen9p_worker has no socket transport yet (`python -m xen9p_worker --help` fails)"
    return None


def _start(name: str, base: Path) -> Server:
    export = base / "export"
    export.mkdir()
    # A sentinel outside the export: no walk may ever reach it.
    (base / "outside").mkdir()
    (base / "outside" / "SECRET").write_text("outside the export\n")
    sock = base / "9p.sock"
    log = base / "server.log"
    if name == "diod":
        if not os.path.exists(DIOD):
            pytest.skip("diod is not installed (apt-get install diod)")
        if os.geteuid() != 0:
            pytest.skip("diod needs root to serve attaches as uid 0")
        cmd = [DIOD, "-f", "-n", "-c", "/dev/null", "-e", str(export), "-l", str(sock), "-L", "stderr"]
        kind, model = "diod", None
    else:
        why = _xen9p_available()
        if why:
            pytest.skip(why)
        model = name.removeprefix("xen9p-")
        cmd = [sys.executable, "-m", "xen9p_worker", "--listen", f"unix:{sock}", "--export", str(export),
               "--security-model", model]
        kind = "xen9p"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    _wait_for_socket(proc, sock, log)
    return Server(kind, model, export, sock, proc, log)


def _stop(srv: Server) -> int | None:
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait(timeout=10)
    return srv.proc.returncode


def _big_xattr_dir() -> str | None:
    """/dev/shm if it holds 64 KiB user xattrs (tmpfs does since Linux 6.6; ext4 stops at a block)."""
    shm = "/dev/shm"
    if not os.path.isdir(shm) or not os.access(shm, os.W_OK):
        return None
    fd, probe = tempfile.mkstemp(dir=shm, prefix="xen9p-probe-")
    try:
        os.setxattr(probe, "user.probe", b"x" * 65536)
        return shm
    except OSError:
        return None
    finally:
        os.close(fd)
        os.unlink(probe)


@pytest.fixture(scope="session")
def host_base(tmp_path_factory):
    """Where exports live: tmpfs when it can hold 64 KiB xattrs (also faster), else pytest's tmp."""
    shm = _big_xattr_dir()
    if shm is None:
        yield tmp_path_factory.getbasetemp()
        return
    base = Path(tempfile.mkdtemp(dir=shm, prefix="xen9p-acceptance-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session", params=SERVERS)
def server(request, host_base):
    base = Path(tempfile.mkdtemp(dir=host_base, prefix=request.param + "-"))
    srv = _start(request.param, base)
    yield srv
    alive = srv.proc.poll() is None
    rc = _stop(srv)
    if srv.kind == "xen9p":
        # The server must survive the whole suite and stop cleanly on SIGTERM.
        assert alive, f"{srv.name} died during the suite:\n{srv.log_text()[-4000:]}"
        assert rc == 0, f"{srv.name} exited {rc} on SIGTERM:\n{srv.log_text()[-4000:]}"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def _select(request):
    """Apply the xen9p_only / models markers for the server the test runs against."""
    if "server" not in request.fixturenames:
        return
    srv: Server = request.getfixturevalue("server")
    only = request.node.get_closest_marker("xen9p_only")
    # XEN9P_ACCEPTANCE_ALL=1 runs xen9p-only tests on diod too, to re-check the reasons given.
    if only is not None and srv.kind != "xen9p" and not os.environ.get("XEN9P_ACCEPTANCE_ALL"):
        pytest.skip(f"xen9p only: {only.kwargs.get('reason') or (only.args[0] if only.args else '')}")
    differs = request.node.get_closest_marker("diod_differs")
    if differs is not None and srv.kind == "diod":
        request.node.add_marker(pytest.mark.xfail(reason="diod: " + differs.args[0], strict=True))
    models = request.node.get_closest_marker("models")
    if models is not None and (srv.kind != "xen9p" or srv.model not in models.args):
        pytest.skip(f"only for security models {', '.join(models.args)}")


@dataclass
class Env:
    """What a test gets: a connection, a fid on its own directory, and that directory on the host."""

    server: Server
    client: Client
    root: Fid  # the test's own directory
    top: Fid  # the export root (attach fid)
    host: Path

    def connect(self, msize: int = MSIZE) -> tuple[Client, Fid]:
        """Another connection, attached and walked to the test's directory."""
        c = self.server.connect(msize)
        top = self.server.attach(c)
        return c, top.walk([self.host.name])


@pytest.fixture
def env(server):
    host = server.new_dir()
    client = server.connect()
    top = server.attach(client)
    root = top.walk([host.name])
    yield Env(server, client, root, top, host)
    alive = not client.closed
    client.close()
    assert alive, f"{server.name} dropped the connection during the test:\n{server.log_text()[-3000:]}"
    assert server.proc.poll() is None, f"{server.name} died:\n{server.log_text()[-3000:]}"
