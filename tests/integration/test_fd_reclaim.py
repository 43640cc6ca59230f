"""A guest opening far more files than the host lets the server hold fds for (fdcache reclaim).

The server runs as a process whose RLIMIT_NOFILE is lowered to 256 (hard too, so it cannot raise it):
thousands of open fids work, open-then-unlink keeps working, and a file unlinked after its fd was
reclaimed stays readable through its fid.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from tests.acceptance.servers import REPO, wait_for_socket
from xen9p_sim.client import Client, SocketTransport
from xen9p_common.p9 import constants as c

NOFILE = 256
FILES = 3000


@pytest.fixture
def server(tmp_path):
    export = tmp_path / "export"
    (export / "many").mkdir(parents=True)
    for i in range(FILES):
        (export / "many" / f"f{i}").write_text(f"file {i}")
    sock, log = tmp_path / "s.sock", tmp_path / "server.log"

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

    with open(log, "w") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "xen9p_worker", "--listen", f"unix:{sock}", "--export",
                                 str(export), "--security-model", "passthrough", "--threads", "2"],
                                stdout=logf, stderr=subprocess.STDOUT, cwd=REPO, preexec_fn=limit)
    try:
        wait_for_socket(proc, sock, log)
        client = Client(SocketTransport.connect_unix(str(sock)), timeout=20.0)
        client.version(65536)
        yield export, client, client.attach(str(export), "root", 0), proc
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _open_many(root, start: int, n: int, flags: int = c.L_O_RDONLY) -> list:
    return [root.open_path(f"many/f{i}", flags) for i in range(start, start + n)]


def test_thousands_of_open_files_under_a_256_fd_limit(server):
    export, client, root, proc = server
    fids = _open_many(root, 0, FILES)
    assert all(f.read() == f"file {i}".encode() for i, f in enumerate(fids))  # each reopened lazily
    assert len(os.listdir(f"/proc/{proc.pid}/fd")) < NOFILE
    for f in fids:
        f.clunk()


def test_unlinked_files_keep_their_fds_whatever_the_pressure(server):
    export, client, root, proc = server
    kept = root.create("kept", c.L_O_RDWR)
    kept.write(b"before unlink")
    root.unlinkat("kept")                       # unlinked while its fd is in use: never reclaimed
    victim = root.open_path("many/f0", c.L_O_RDWR)
    others = _open_many(root, 1, 1000)          # victim's fd is the least recently used: reclaimed
    many = root.walk("many")
    many.unlinkat("f0")                         # the fid is given an fd again before the name goes
    many.clunk()
    more = _open_many(root, 1001, 1000)         # and pressure again, after the name went
    assert kept.read() == b"before unlink"
    assert victim.read() == b"file 0"
    assert victim.write(b"FILE", 0) == 4 and victim.read() == b"FILE 0"
    assert not (export / "many" / "f0").exists()
    for f in others + more + [kept, victim]:
        f.clunk()
