"""Shared fixtures for the xenstore tests: a simulated xenstored per test, clients, C-tool runner.

Import the fixtures you use into a test module (`from tests.integration.xs_fixtures import xenstored`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from xen9p_sim.xenstore.xenstored import Quotas, XenstoredServer
from xen9p_common.platform.xswire import XsWireClient

XS_TOOLS = ("xenstore-write", "xenstore-read", "xenstore-ls", "xenstore-list", "xenstore-rm",
            "xenstore-chmod", "xenstore-exists", "xenstore-watch")


@pytest.fixture
def xs_dir():
    # Unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="xs", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def xenstored(xs_dir):
    server = XenstoredServer(os.path.join(xs_dir, "sock")).start()
    yield server
    server.stop()


@pytest.fixture
def small_xenstored(xs_dir):
    quotas = Quotas(max_nodes=20, max_entry_size=64, max_watches=3, max_transactions=2)
    server = XenstoredServer(os.path.join(xs_dir, "sock"), quotas=quotas).start()
    yield server
    server.stop()


@pytest.fixture
def dom0(xenstored):
    c = XsWireClient(xenstored.socket_path, timeout=5)
    yield c
    c.close()


def make_guest(server: XenstoredServer, dom0: XsWireClient, domid: int) -> XsWireClient:
    """What the toolstack does for a new guest: introduce it, give it /local/domain/<domid>, connect as it."""
    from xen9p_common.platform import Perm
    dom0.introduce_domain(domid)
    home = f"/local/domain/{domid}"
    dom0.mkdir(home)
    dom0.set_perms(home, [Perm("n", domid), Perm("r", 0)])
    return XsWireClient(server.domain_socket(domid), timeout=5)


def xs_tools_or_skip() -> None:
    missing = [t for t in XS_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"xenstore-utils not installed (missing {', '.join(missing)})")


def run_tool(server_or_path, *argv: str, timeout: float = 10.0, check: bool = False) -> subprocess.CompletedProcess:
    """Run one xenstore-utils tool against the sim: libxenstore honours XENSTORED_PATH."""
    path = server_or_path if isinstance(server_or_path, str) else server_or_path.socket_path
    env = dict(os.environ, XENSTORED_PATH=path)
    return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=timeout, check=check)
