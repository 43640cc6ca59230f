"""A worker killed after a Tclunk applied its xattr change but before the fid went: the successor
re-running that Tclunk must answer as the first run would have (ring_resume), not EEXIST/ENODATA."""
from __future__ import annotations

import errno
import os

import pytest

from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M
from xen9p_worker.ring_resume import ResumeFixup

from .test_server_core import make, tree  # noqa: F401  (tree: the fixture)


@pytest.fixture
def conn(tree):  # noqa: F811
    srv, c = make(tree)
    c.ok(M.Twalk, 0, 1, ())
    c.ok(M.Tlcreate, 1, "f", C.L_O_RDWR, 0o644, 0)
    try:
        os.setxattr(tree / "f", "user.probe", b"1")
        os.removexattr(tree / "f", "user.probe")
    except OSError as e:
        pytest.skip(f"the export's filesystem takes no user xattrs: {e.strerror}")
    yield tree, c
    c.s.close()
    srv.close()


def _xattr_fid(c, fid: int, name: str, value: bytes, flags: int) -> bytes:
    """fid ready to apply the change at its clunk; returns that Tclunk's frame."""
    c.ok(M.Twalk, 0, fid, ("f",))
    c.ok(M.Txattrcreate, fid, name, len(value), flags)
    if value:
        c.ok(M.Twrite, fid, 0, value)
    return M.encode(M.Tclunk(900, fid))


def _fid_gone(c, fid: int) -> bool:
    return c.err(M.Tgetattr, fid, C.GETATTR_BASIC) == errno.ENOENT


def test_an_applied_xattr_create_is_answered_not_refused(conn):
    export, c = conn
    frame = _xattr_fid(c, 10, "user.k", b"v1", C.XATTR_CREATE)
    os.setxattr(export / "f", "user.k", b"v1")  # what the killed worker had done
    assert c.raw(frame).ecode == errno.EEXIST  # a plain re-run: why the fixup exists
    frame = _xattr_fid(c, 11, "user.k", b"v1", C.XATTR_CREATE)
    out = ResumeFixup(c.s).prepare(frame)
    assert isinstance(M.decode(out), M.Rclunk)
    assert _fid_gone(c, 11)
    assert os.getxattr(export / "f", "user.k") == b"v1"


def test_an_xattr_create_not_yet_applied_is_re_run(conn):
    export, c = conn
    frame = _xattr_fid(c, 12, "user.n", b"new", C.XATTR_CREATE)
    assert ResumeFixup(c.s).prepare(frame) is frame
    assert isinstance(c.raw(frame), M.Rclunk)
    assert os.getxattr(export / "f", "user.n") == b"new"


def test_someone_elses_value_is_not_taken_for_ours(conn):
    export, c = conn
    os.setxattr(export / "f", "user.o", b"theirs")
    frame = _xattr_fid(c, 13, "user.o", b"ours", C.XATTR_CREATE)
    assert ResumeFixup(c.s).prepare(frame) is frame
    assert c.raw(frame).ecode == errno.EEXIST


def test_an_applied_xattr_removal_is_answered_and_a_pending_one_re_run(conn):
    export, c = conn
    os.setxattr(export / "f", "user.r", b"x")
    frame = _xattr_fid(c, 14, "user.r", b"", C.XATTR_REPLACE)  # size 0 + REPLACE: remove
    assert ResumeFixup(c.s).prepare(frame) is frame  # still there: not applied yet
    os.removexattr(export / "f", "user.r")  # the killed worker had removed it
    out = ResumeFixup(c.s).prepare(frame)
    assert isinstance(M.decode(out), M.Rclunk)
    assert _fid_gone(c, 14)


def test_a_failed_xattr_apply_still_clunks_the_fid(conn):
    export, c = conn
    os.setxattr(export / "f", "user.e", b"x")
    frame = _xattr_fid(c, 15, "user.e", b"y", C.XATTR_CREATE)
    assert c.raw(frame).ecode == errno.EEXIST
    assert _fid_gone(c, 15)


def test_the_fid_stays_in_the_table_while_its_change_is_applied(conn, monkeypatch):
    """So a worker killed during or right after the apply leaves the fid (and the value) to its successor."""
    export, c = conn
    frame = _xattr_fid(c, 16, "user.s", b"v", 0)
    seen = []
    backend = c.s.backend
    real = backend.xattr_set

    def spy(fd, name, value, flags):
        try:
            seen.append(c.s.fids.get(16).xattr_value)
        except OSError:
            seen.append(None)
        return real(fd, name, value, flags)

    monkeypatch.setattr(backend, "xattr_set", spy)
    assert isinstance(c.raw(frame), M.Rclunk)
    assert seen == [b"v"]
    assert _fid_gone(c, 16)


def test_an_xattr_value_chunk_already_taken_is_answered_not_refused(conn):
    """Twrite chunks of an xattr value must come in order: a re-run of one the fid has is not a gap."""
    export, c = conn
    c.ok(M.Twalk, 0, 17, ("f",))
    c.ok(M.Txattrcreate, 17, "user.w", 6, 0)
    first = M.encode(M.Twrite(901, 17, 0, b"abc"))
    assert ResumeFixup(c.s).prepare(first) is first  # not taken yet: run it
    assert isinstance(c.raw(first), M.Rwrite)
    assert c.raw(first).ecode == errno.EINVAL  # what a plain re-run answers
    out = ResumeFixup(c.s).prepare(first)
    assert M.decode(out) == M.Rwrite(901, 3)
    second = M.encode(M.Twrite(902, 17, 3, b"def"))
    assert ResumeFixup(c.s).prepare(second) is second
    assert isinstance(c.raw(second), M.Rwrite)
    assert isinstance(c.raw(M.encode(M.Tclunk(903, 17))), M.Rclunk)
    assert os.getxattr(export / "f", "user.w") == b"abcdef"
