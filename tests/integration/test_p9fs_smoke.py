"""Smoke of the xen9p socket transport with a 9P client we did not write: py9p from PyPI `p9fs` 0.0.4.

py9p speaks 9P2000.L one request at a time; its rename sends an oversize message, so mv is not used.
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest

from tests.acceptance.servers import start_server, stop_server

py9p = pytest.importorskip("py9p.py9p", reason="p9fs 0.0.4 (py9p) is not installed")
p9fs = pytest.importorskip("p9fs", reason="p9fs 0.0.4 is not installed")


class UnixP9FileSystem(p9fs.P9FileSystem):
    """p9fs only dials TCP; the same client over our Unix socket (nothing else changed)."""

    cachable = False  # fsspec would otherwise reuse one instance across servers

    def __init__(self, sock_path: str, **kw) -> None:
        self.sock_path = sock_path
        super().__init__(host="unix", port=0, **kw)

    def _connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)  # a stuck server fails the test instead of hanging it
        s.connect(self.sock_path)
        self.client = py9p.Client(s, credentials=py9p.Credentials(user=self.username),
                                  ver=self.version, aname=self.aname, msize=65536)


@pytest.fixture(params=["xen9p-passthrough", "xen9p-mapped-xattr", "xen9p-mapped-file", "diod"])
def served(request):
    base = Path(tempfile.mkdtemp(prefix=f"p9fs-{request.param}-"))
    srv = start_server(request.param, base)
    yield srv
    alive = srv.proc.poll() is None
    rc = stop_server(srv)
    shutil.rmtree(base, ignore_errors=True)
    if srv.kind == "xen9p":
        assert alive and rc == 0, f"{srv.name} exit {rc}:\n{srv.log_text()[-3000:]}"


def test_p9fs_filesystem_smoke(served):
    fs = UnixP9FileSystem(str(served.socket), username="root", version="9P2000.L", aname=str(served.export))
    host = served.export
    fs.mkdir("dir")
    fs.makedirs("dir/a/b", exist_ok=True)
    assert (host / "dir" / "a" / "b").is_dir()
    data = os.urandom(200_000)  # several Twrite/Tread chunks
    with fs.open("dir/file.bin", "wb") as f:
        f.write(data)
    assert (host / "dir" / "file.bin").read_bytes() == data
    with fs.open("dir/file.bin", "rb") as f:
        assert f.read() == data
    with fs.open("dir/file.bin", "rb") as f:
        f.seek(1000)
        assert f.read(10) == data[1000:1010]
    (host / "dir" / "from-host.txt").write_text("hello")
    assert fs.cat_file("dir/from-host.txt") == b"hello"
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls("dir", detail=False))
    assert names == ["a", "file.bin", "from-host.txt"]
    info = fs.info("dir/file.bin")
    assert info["size"] == len(data) and info["type"] == "file"
    assert fs.isdir("dir/a") and fs.isfile("dir/file.bin")
    assert not fs.exists("dir/missing")
    fs.cp_file("dir/from-host.txt", "dir/copy.txt")
    assert (host / "dir" / "copy.txt").read_text() == "hello"
    fs.rm("dir/copy.txt")
    assert not (host / "dir" / "copy.txt").exists()
    fs.rmdir("dir/a/b")
    assert not (host / "dir" / "a" / "b").exists()


def test_py9p_raw_session(served):
    """The protocol calls one by one, as py9p encodes them."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(str(served.socket))
    cl = py9p.Client(s, credentials=py9p.Credentials(user="root"), ver=py9p.Version.v9P2000L,
                     aname=str(served.export), msize=65536)
    try:
        assert cl.msize <= 65536
        (served.export / "r.txt").write_bytes(b"raw read\n")
        F = 20
        r = cl._walk(cl.ROOT, F, ["r.txt"])
        assert len(r.wqid) == 1
        cl._lopen(F, 0)
        assert cl._read(F, 0, 4096).data == b"raw read\n"
        a = cl._getattr(F).stat[0]
        assert stat.S_ISREG(a.mode) and a.length == 9
        cl._clunk(F)
        cl._walk(cl.ROOT, F, [])
        cl._lcreate(F, "new.txt", os.O_CREAT | os.O_WRONLY, 0o644, 0)
        assert cl._write(F, 0, b"written by py9p").count == 15
        cl._clunk(F)
        assert (served.export / "new.txt").read_bytes() == b"written by py9p"
        cl._mkdir(cl.ROOT, "sub", 0o755)
        assert (served.export / "sub").is_dir()
        with pytest.raises(py9p.RpcError):
            cl._walk(cl.ROOT, F, ["missing"])
        cl._walk(cl.ROOT, F, [])
        cl._lopen(F, os.O_RDONLY | os.O_DIRECTORY)
        ents = cl._readdir(F, 0, 8192)
        assert ents.count > 0
        cl._clunk(F)
    finally:
        s.close()
