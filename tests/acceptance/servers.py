"""Start 9P servers as real processes on a Unix socket: xen9p in a security model, or diod.

Shared by the acceptance suite and the integration smoke tests.
"""
from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xen9p_sim.client import Client, Fid, SocketTransport
from tests.waiting import wait_for

DIOD = "/usr/sbin/diod"
MODELS = ("passthrough", "none", "mapped-xattr", "mapped-file")
SERVERS = tuple(f"xen9p-{m}" for m in MODELS) + ("diod",)
MSIZE = 65536  # diod's cap: compare the two servers at the same msize
START_DEADLINE = 15.0
REPO = Path(__file__).resolve().parents[2]


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

    def connect_raw(self, timeout: float = 10.0) -> Client:
        """A new connection, nothing sent yet."""
        return Client(SocketTransport.connect_unix(str(self.socket)), timeout=timeout, name=self.name)

    def connect(self, msize: int = MSIZE, timeout: float = 10.0) -> Client:
        """A new connection with Tversion done (no attach)."""
        c = self.connect_raw(timeout)
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


def _accepts(path: Path) -> bool:
    """True once a connect() to the Unix socket succeeds, i.e. the server is listening."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(2)
        s.connect(str(path))
        return True
    except OSError:  # ENOENT before bind(), ECONNREFUSED between bind() and listen()
        return False
    finally:
        s.close()


def wait_for_socket(proc: subprocess.Popen, path: Path, log: Path) -> None:
    # The socket file appears at bind(), but diod listen()s only after binding all its addresses
    # (and logging), so a client dialling as soon as the file exists can get ECONNREFUSED under load.
    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        return path.exists() and _accepts(path)
    try:
        wait_for(listening, START_DEADLINE, f"the server to listen on {path}", interval=0.02)
    except AssertionError as e:
        proc.kill()
        raise RuntimeError(f"{e}:\n{log.read_text(errors='replace')}") from None


def start_server(name: str, base: Path) -> Server:
    """Start server `name` (one of SERVERS) with its export under `base`.

    Skips when the machine lacks diod or root for it; xen9p that does not start is a failure (RuntimeError)."""
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
        model = name.removeprefix("xen9p-")
        cmd = [sys.executable, "-m", "xen9p_worker", "--listen", f"unix:{sock}", "--export", str(export),
               "--security-model", model]
        kind = "xen9p"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    wait_for_socket(proc, sock, log)
    return Server(kind, model, export, sock, proc, log)


def stop_server(srv: Server) -> int | None:
    """SIGTERM, then SIGKILL after 10 s; returns the exit code."""
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait(timeout=10)
    return srv.proc.returncode
