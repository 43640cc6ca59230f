"""Acceptance fixtures: start a 9P server as a real process on a Unix socket and connect our client.

Servers: xen9p (`python -m xen9p_worker`) in each security model, and Debian's diod as a peer.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from xen9p_sim.client import Client, Fid

from .servers import MSIZE, SERVERS, Server, start_server, stop_server


def pytest_configure(config):
    config.addinivalue_line("markers", "xen9p_only(reason): needs xen9p semantics or extensions (not run on diod)")
    config.addinivalue_line("markers", "models(*names): generated only for xen9p in these security models")
    config.addinivalue_line("markers", "diod_differs(reason): diod behaves differently here (strict xfail on diod)")


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


def applicable_servers(node) -> tuple[str, ...]:
    """The servers a test applies to, from its markers: `models` names xen9p's security models, `xen9p_only`
    leaves diod out (XEN9P_ACCEPTANCE_ALL=1 keeps diod in, to re-check the reasons given)."""
    models = node.get_closest_marker("models")
    if models is not None:
        return tuple(s for s in SERVERS if s.removeprefix("xen9p-") in models.args)
    if node.get_closest_marker("xen9p_only") is not None and not os.environ.get("XEN9P_ACCEPTANCE_ALL"):
        return tuple(s for s in SERVERS if s.startswith("xen9p-"))
    return SERVERS


def pytest_generate_tests(metafunc):
    """One item per server the test applies to: a check that cannot apply to a server is not generated."""
    if "server" in metafunc.fixturenames:
        names = applicable_servers(metafunc.definition)
        metafunc.parametrize("server", names, indirect=True, scope="session", ids=names)


@pytest.fixture(scope="session")
def server(request, host_base):
    base = Path(tempfile.mkdtemp(dir=host_base, prefix=request.param + "-"))
    srv = start_server(request.param, base)
    yield srv
    alive = srv.proc.poll() is None
    rc = stop_server(srv)
    if srv.kind == "xen9p":
        # The server must survive the whole suite and stop cleanly on SIGTERM.
        assert alive, f"{srv.name} died during the suite:\n{srv.log_text()[-4000:]}"
        assert rc == 0, f"{srv.name} exited {rc} on SIGTERM:\n{srv.log_text()[-4000:]}"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def _diod_differs(request):
    """A test marked diod_differs is a strict xfail on diod."""
    differs = request.node.get_closest_marker("diod_differs")
    if differs is not None and "server" in request.fixturenames and request.getfixturevalue("server").kind == "diod":
        request.node.add_marker(pytest.mark.xfail(reason="diod: " + differs.args[0], strict=True))


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
