"""A read-only export (xen9pd's [[export]] readonly): EROFS to every modifying 9P2000.L request, in every
security model, and nothing on the host changes - data, names, modes, times, xattrs, the models' metadata.

The check sits in the backend's modifying calls, which every dialect's handlers go through.
"""
from __future__ import annotations

import errno
import os
import stat

import pytest

from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M
from xen9p_worker.backend.local import LocalBackend
from xen9p_worker.dispatch import Server

from .test_server_core import Conn, tree  # noqa: F401  (tree: the fixture)

MODELS = ("passthrough", "none", "mapped-xattr", "mapped-file")


def _snapshot(root: str) -> dict:
    """Everything a change could touch, for every name below root (hidden metadata included)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                xattrs = {k: os.getxattr(p, k) for k in os.listxattr(p)}
            data = open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                                              st.st_nlink, data, xattrs)
    return out


@pytest.fixture(params=MODELS)
def ro(request, tree):  # noqa: F811
    export = tree
    # Made through a writable server, so the mapped models' own metadata exists too.
    rw = Server(LocalBackend(str(export), request.param), pool_size=2)
    c = Conn(rw)
    c.attach()
    c.ok(M.Tmkdir, 0, "d", 0o755, 0)
    c.ok(M.Twalk, 0, 1, ("d",))
    c.ok(M.Tlcreate, 1, "f", C.L_O_RDWR, 0o640, 0)
    c.ok(M.Twrite, 1, 0, b"content")
    c.ok(M.Tclunk, 1)
    c.s.close()
    rw.close()
    before = _snapshot(str(export))
    srv = Server(LocalBackend(str(export), request.param, readonly=True), pool_size=2)
    c = Conn(srv)
    c.attach()
    c.ok(M.Twalk, 0, 1, ("d",))
    c.ok(M.Twalk, 0, 2, ("d", "f"))
    yield c
    c.s.close()
    srv.close()
    assert _snapshot(str(export)) == before, "the read-only export changed"


def _fresh(c: Conn, fid: int, names: tuple) -> int:
    c.ok(M.Twalk, 0, fid, names)
    return fid


def test_every_modifying_request_gets_erofs(ro):
    c = ro
    now = (1, 0)
    attempts = [
        (M.Tlcreate, _fresh(c, 10, ("d",)), "new", C.L_O_RDWR, 0o644, 0),
        (M.Tmkdir, 1, "nd", 0o755, 0),
        (M.Tsymlink, 1, "sl", "target", 0),
        (M.Tmknod, 1, "fifo", stat.S_IFIFO | 0o644, 0, 0, 0),
        (M.Tlink, 1, 2, "hard"),
        (M.Trenameat, 1, "f", 1, "g"),
        (M.Trename, 2, 0, "g"),
        (M.Tunlinkat, 1, "f", 0),
        (M.Tunlinkat, 0, "d", C.AT_REMOVEDIR),
        (M.Tsetattr, 2, C.SETATTR_MODE, 0o777, 0, 0, 0, 0, 0, 0, 0),
        (M.Tsetattr, 2, C.SETATTR_UID | C.SETATTR_GID, 0, 1234, 1234, 0, 0, 0, 0, 0),
        (M.Tsetattr, 2, C.SETATTR_SIZE, 0, 0, 0, 0, 0, 0, 0, 0),
        (M.Tsetattr, 2, C.SETATTR_ATIME | C.SETATTR_ATIME_SET | C.SETATTR_MTIME | C.SETATTR_MTIME_SET,
         0, 0, 0, 0, *now, *now),
        (M.Txattrcreate, _fresh(c, 11, ("d", "f")), "user.x", 1, 0),
        (M.Tlopen, _fresh(c, 12, ("d", "f")), C.L_O_WRONLY),
        (M.Tlopen, _fresh(c, 13, ("d", "f")), C.L_O_RDWR),
        (M.Tlopen, _fresh(c, 14, ("d", "f")), C.L_O_RDONLY | C.L_O_TRUNC),
        (M.Tlopen, _fresh(c, 15, ("d", "f")), C.L_O_WRONLY | C.L_O_APPEND),
        (M.Tremove, _fresh(c, 16, ("d", "f"))),
    ]
    for cls, *args in attempts:
        assert c.err(cls, *args) == errno.EROFS, f"{cls.__name__}{tuple(args)}"


def test_reading_still_works(ro):
    c = ro
    c.ok(M.Tlopen, 2, C.L_O_RDONLY)
    assert c.ok(M.Tread, 2, 0, 100).data.tobytes() == b"content"
    c.ok(M.Tgetattr, 2, 0x3FFF)
    c.ok(M.Tlopen, 1, C.L_O_RDONLY)
    assert len(c.ok(M.Treaddir, 1, 0, 4096).data) > 0
    c.ok(M.Txattrwalk, 0, 20, "")
    c.ok(M.Tstatfs, 0)


def test_every_modifying_9p2000u_request_gets_erofs(tree):  # noqa: F811
    from xen9p_common.p9.stat import STAT_DONT_TOUCH

    from .test_server_u import UConn
    export = tree
    (export / "d").mkdir()
    (export / "d" / "f").write_bytes(b"content")
    before = _snapshot(str(export))
    srv = Server(LocalBackend(str(export), "passthrough", readonly=True), pool_size=2)
    c = UConn(srv)
    try:
        c.ok(M.Twalk, 0, 1, ("d",))
        c.ok(M.Twalk, 0, 2, ("d", "f"))
        attempts = [
            (M.Tcreate, _fresh(c, 10, ("d",)), "new", 0o644, C.ORDWR, ""),
            (M.Tcreate, _fresh(c, 11, ("d",)), "f", 0o644, C.OREAD, ""),      # exists: opened, read-only: EROFS
            (M.Tcreate, _fresh(c, 12, ("d",)), "nd", C.DMDIR | 0o755, C.OREAD, ""),
            (M.Tcreate, _fresh(c, 13, ("d",)), "sl", C.DMSYMLINK | 0o777, C.OREAD, "target"),
            (M.Tcreate, _fresh(c, 14, ("d",)), "hl", C.DMLINK, C.OREAD, "2\n"),
            (M.Tcreate, _fresh(c, 15, ("d",)), "p", C.DMNAMEDPIPE | 0o644, C.OREAD, ""),
            (M.Topen, _fresh(c, 16, ("d", "f")), C.OWRITE),
            (M.Topen, _fresh(c, 17, ("d", "f")), C.ORDWR),
            (M.Topen, _fresh(c, 18, ("d", "f")), C.OREAD | C.OTRUNC),
            (M.Topen, _fresh(c, 19, ("d", "f")), C.OREAD | C.ORCLOSE),
            (M.Twstat, 2, STAT_DONT_TOUCH._replace(mode=0o600)),
            (M.Twstat, 2, STAT_DONT_TOUCH._replace(length=1)),
            (M.Twstat, 2, STAT_DONT_TOUCH._replace(mtime=1)),
            (M.Twstat, 2, STAT_DONT_TOUCH._replace(name="g")),
            (M.Tremove, _fresh(c, 20, ("d", "f"))),
        ]
        for cls, *args in attempts:
            assert c.err(cls, *args) == errno.EROFS, f"{cls.__name__}{tuple(args)}"
        c.ok(M.Topen, 2, C.OREAD)
        assert c.ok(M.Tread, 2, 0, 100).data.tobytes() == b"content"
    finally:
        c.s.close()
        srv.close()
    assert _snapshot(str(export)) == before
