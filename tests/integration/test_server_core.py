"""The 9P server core driven in-process with encoded frames: semantics, security models, hostile cases.

No transport: each test submits frames to a Session and decodes what the reply callback gets.
"""
from __future__ import annotations

import errno
import os
import queue
import shutil
import socket
import tempfile
import stat
import struct
import threading
from pathlib import Path

import pytest

from xen9p_common.p9 import messages as M
from xen9p_common.p9 import constants as C
from xen9p_common.p9 import unpack_dirents
from xen9p_worker.backend.local import LocalBackend
from xen9p_worker.backend.qidmap import QidPathMap
from xen9p_worker.dispatch import Limits, Server

ROOT = os.geteuid() == 0
DEADLINE = 10.0


class Conn:
    """A session plus helpers: call() waits for the reply of one request."""

    def __init__(self, server: Server, msize: int = 65536) -> None:
        self.s = server.session()
        self.tag = 0
        r = self.call(M.Tversion(M.NOTAG, msize, "9P2000.L"))
        assert isinstance(r, M.Rversion)

    def next_tag(self) -> int:
        self.tag = (self.tag + 1) % 0xFFFF
        return self.tag

    def send(self, msg) -> "queue.Queue":
        q: queue.Queue = queue.Queue()
        self.s.submit(M.encode(msg), q.put)
        return q

    def raw(self, frame: bytes):
        q: queue.Queue = queue.Queue()
        self.s.submit(frame, q.put)
        return M.decode(q.get(timeout=DEADLINE))

    def call(self, msg):
        return M.decode(self.send(msg).get(timeout=DEADLINE))

    def ok(self, cls, *args):
        r = self.call(cls(self.next_tag(), *args))
        assert not isinstance(r, M.Rlerror), f"{cls.__name__}{args}: {os.strerror(r.ecode)}"
        return r

    def err(self, cls, *args) -> int:
        r = self.call(cls(self.next_tag(), *args))
        assert isinstance(r, M.Rlerror), f"{cls.__name__}{args} succeeded: {r}"
        return r.ecode

    def walk_fails(self, fid: int, newfid: int, names: tuple) -> bool:
        """True if the walk did not reach its end (Rlerror, or a partial Rwalk)."""
        r = self.call(M.Twalk(self.next_tag(), fid, newfid, names))
        return isinstance(r, M.Rlerror) or len(r.wqids) < len(names)

    def attach(self, fid: int = 0, uid: int = 0):
        return self.ok(M.Tattach, fid, M.NOFID, "root", "", uid)


@pytest.fixture
def tree(tmp_path_factory):
    # tmpfs where there is one: fast, and it takes 64 KiB xattr values (ext4 does not).
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    tmp_path = Path(tempfile.mkdtemp(prefix="xen9p-core-", dir=base))
    export = tmp_path / "export"
    export.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "SECRET").write_bytes(b"secret")
    yield export
    shutil.rmtree(tmp_path, ignore_errors=True)


def make(export, model="passthrough", **kw):
    srv = Server(LocalBackend(str(export), model), pool_size=kw.pop("pool_size", 4), **kw)
    c = Conn(srv)
    c.attach()
    return srv, c


@pytest.fixture
def pt(tree):
    srv, c = make(tree)
    yield tree, c
    c.s.close()
    srv.close()


# -- session ---------------------------------------------------------------------

def test_version_negotiation_and_reset(tree):
    srv = Server(LocalBackend(str(tree)), msize_cap=8192 + 24)
    c = Conn(srv)
    r = c.call(M.Tversion(M.NOTAG, 1 << 20, "9P2000.L.extra"))
    assert (r.msize, r.version) == (8192 + 24, "9P2000.L")
    assert c.call(M.Tversion(M.NOTAG, 65536, "9P2000.x")).version == "unknown"
    assert c.call(M.Tversion(M.NOTAG, 65536, "9P2000.u")).version == "9P2000.u"  # test_server_u.py
    c.call(M.Tversion(M.NOTAG, 65536, "9P2000.L"))
    assert c.err(M.Tversion, 4095, "9P2000.L") == errno.EINVAL
    c.call(M.Tversion(M.NOTAG, 65536, "9P2000.L"))
    c.attach(7)
    c.call(M.Tversion(M.NOTAG, 65536, "9P2000.L"))
    assert c.err(M.Tgetattr, 7, C.GETATTR_BASIC) == errno.ENOENT  # Tversion clunked it
    srv.close()


def test_iounit_is_aligned_to_the_block_size(pt):
    export, c = pt
    (export / "f").write_bytes(b"x")
    c.ok(M.Twalk, 0, 1, ("f",))
    r = c.ok(M.Tlopen, 1, C.L_O_RDONLY)
    bs = os.statvfs(export).f_bsize
    assert r.iounit == (65536 - 24) // bs * bs


def test_garbage_frames_get_rlerror_and_the_session_survives(pt):
    export, c = pt
    assert isinstance(c.raw(b"\x03\x00"), M.Rlerror)  # shorter than a header
    r = c.raw(struct.pack("<IBH", 99, 24, 5) + b"\0" * 4)  # size field lies
    assert isinstance(r, M.Rlerror) and r.tag == 5
    r = c.raw(struct.pack("<IBH", 7, 200, 6))  # unknown type
    assert (r.tag, r.ecode) == (6, errno.EOPNOTSUPP)
    r = c.raw(struct.pack("<IBHI", 11, 24, 8, 0))  # truncated Tgetattr
    assert (r.tag, r.ecode) == (8, errno.EPROTO)
    r = c.raw(M.encode(M.Rclunk(9)))  # a reply sent as a request
    assert (r.tag, r.ecode) == (9, errno.EOPNOTSUPP)
    r = c.raw(struct.pack("<IBHIH", 13, 110, 10, 0, 0))  # Twalk with the array count cut off
    assert isinstance(r, M.Rlerror) and r.tag == 10
    assert isinstance(c.call(M.Tgetattr(11, 0, C.GETATTR_BASIC)), M.Rgetattr)


def test_unexpected_exception_is_eio_and_serving_continues(pt):
    export, c = pt
    table = dict(c.s._table)

    def boom(s, m, req):
        raise RuntimeError("bug")
    table[M.Tstatfs] = boom
    c.s._table = table  # this session only
    assert c.err(M.Tstatfs, 0) == errno.EIO
    assert isinstance(c.call(M.Tgetattr(1, 0, C.GETATTR_BASIC)), M.Rgetattr)


def test_unknown_fid_and_fid_in_use(pt):
    export, c = pt
    assert c.err(M.Tgetattr, 99, C.GETATTR_BASIC) == errno.ENOENT
    c.ok(M.Twalk, 0, 1, ())
    assert c.err(M.Twalk, 0, 1, ()) == errno.EEXIST


# -- walking and confinement ---------------------------------------------------------

def test_dotdot_chains_stay_at_the_root(pt):
    export, c = pt
    (export / "a" / "b").mkdir(parents=True)
    root = c.ok(M.Tgetattr, 0, C.GETATTR_BASIC).qid
    r = c.ok(M.Twalk, 0, 1, ("..",) * 16)
    assert all(q.path == root.path for q in r.wqids)
    r = c.ok(M.Twalk, 0, 2, ("a", "b", "..", "..", "..", "..", "a"))
    assert r.wqids[-1].path == os.stat(export / "a").st_ino
    assert r.wqids[3].path == root.path


def test_symlinks_are_never_followed(pt):
    export, c = pt
    tmp_path = export.parent
    os.symlink("/", export / "toroot")
    os.symlink(str(tmp_path / "outside"), export / "abs")
    os.symlink("../outside", export / "rel")
    for name in ("toroot", "abs", "rel"):
        r = c.ok(M.Twalk, 0, 1, (name,))
        assert r.wqids[0].type == C.QTSYMLINK
        assert c.err(M.Twalk, 1, 2, ("SECRET",)) in (errno.ENOTDIR, errno.ELOOP)
        assert c.err(M.Tlopen, 1, C.L_O_RDONLY) in (errno.ELOOP, errno.ENXIO)
        c.ok(M.Tclunk, 1)
    r = c.ok(M.Twalk, 0, 1, ("abs", "SECRET"))  # partial: only the symlink's qid
    assert len(r.wqids) == 1
    assert c.err(M.Tgetattr, 1, C.GETATTR_BASIC) == errno.ENOENT  # newfid left unset


def test_rename_a_symlink_escape_between_walks(pt):
    export, c = pt
    (export / "d").mkdir()
    c.ok(M.Twalk, 0, 1, ("d",))
    os.symlink("..", export / "d" / "l")  # harmless where it is: d/l -> export
    c.ok(M.Twalk, 1, 2, ("l",))
    os.rename(export / "d" / "l", export / "l")  # now export/l -> the export's parent
    assert c.walk_fails(0, 3, ("l", "outside"))
    assert c.walk_fails(2, 3, ("outside",))
    # A fid whose path now crosses the symlink fails rather than escapes when re-walked.
    c.ok(M.Twalk, 0, 4, ("d",))
    os.rename(export / "d", export / "real")
    os.symlink("..", export / "d")
    os.mkdir(export / "outside_probe")
    c.s.fds.clear()  # force fids to be re-walked from their paths
    assert c.walk_fails(4, 5, ("outside_probe",))  # d is now a symlink to the parent


@pytest.mark.parametrize("name,err", [("a/b", errno.ENOENT), ("", errno.ENOENT), ("a\0b", errno.ENOENT)])
def test_bad_names_refused(pt, name, err):
    export, c = pt
    (export / "a").mkdir()
    assert c.err(M.Twalk, 0, 1, (name,)) == err
    assert c.err(M.Tmkdir, 0, name, 0o755, 0) == err
    c.ok(M.Twalk, 0, 2, ())
    assert c.err(M.Tlcreate, 2, name, C.L_O_RDWR, 0o644, 0) == err
    assert c.err(M.Tunlinkat, 0, name, 0) == err


def test_dot_names_refused_where_not_allowed(pt):
    export, c = pt
    for name in (".", ".."):
        assert c.err(M.Tmkdir, 0, name, 0o755, 0) == errno.EEXIST
        assert c.err(M.Tsymlink, 0, name, "x", 0) == errno.EEXIST
    assert c.err(M.Tunlinkat, 0, ".", C.AT_REMOVEDIR) == errno.EINVAL
    assert c.err(M.Tunlinkat, 0, "..", C.AT_REMOVEDIR) == errno.ENOTEMPTY
    assert c.err(M.Trenameat, 0, "..", 0, "x") == errno.EISDIR


def test_special_files_are_never_opened(pt):
    export, c = pt
    os.mkfifo(export / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(export / "sock"))
    names = ["fifo", "sock"]
    if ROOT:
        os.mknod(export / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        names.append("null")
    for i, name in enumerate(names, 1):
        c.ok(M.Twalk, 0, i, (name,))
        c.ok(M.Tgetattr, i, C.GETATTR_BASIC)
        assert c.err(M.Tlopen, i, C.L_O_RDWR | C.L_O_NONBLOCK) == errno.ENXIO  # a fifo would block
    s.close()


def test_mknod_creates_special_files_in_passthrough(pt):
    export, c = pt
    c.ok(M.Tmknod, 0, "p", stat.S_IFIFO | 0o640, 0, 0, 0)
    assert stat.S_ISFIFO(os.lstat(export / "p").st_mode)
    assert stat.S_IMODE(os.lstat(export / "p").st_mode) == 0o640
    assert c.err(M.Tmknod, 0, "d", stat.S_IFDIR | 0o755, 0, 0, 0) == errno.EINVAL


# -- open files ---------------------------------------------------------------------

def test_open_unlink_read_write_getattr_truncate(pt):
    export, c = pt
    (export / "f").write_bytes(b"0123456789")
    c.ok(M.Twalk, 0, 1, ("f",))
    c.ok(M.Tlopen, 1, C.L_O_RDWR)
    c.ok(M.Tunlinkat, 0, "f", 0)
    assert not (export / "f").exists()
    assert c.ok(M.Tread, 1, 2, 4).data.tobytes() == b"2345"
    assert c.ok(M.Twrite, 1, 10, b"abc").count == 3
    assert c.ok(M.Tgetattr, 1, C.GETATTR_BASIC).size == 13
    c.ok(M.Tsetattr, 1, C.SETATTR_SIZE, 0, 0, 0, 4, 0, 0, 0, 0)
    r = c.ok(M.Tgetattr, 1, C.GETATTR_BASIC)
    assert (r.size, r.nlink) == (4, 0)
    assert c.ok(M.Tread, 1, 0, 100).data.tobytes() == b"0123"
    c.ok(M.Tclunk, 1)


def test_create_write_read_fsync(pt):
    export, c = pt
    c.ok(M.Twalk, 0, 1, ())
    r = c.ok(M.Tlcreate, 1, "new", C.L_O_RDWR, 0o640, 0)
    assert r.qid.type == C.QTFILE
    c.ok(M.Twrite, 1, 0, b"hello")
    c.ok(M.Tfsync, 1, 0)
    assert (export / "new").read_bytes() == b"hello"
    assert stat.S_IMODE(os.stat(export / "new").st_mode) == 0o640
    assert c.err(M.Tlcreate, 0, "new", C.L_O_RDWR | C.L_O_EXCL, 0o640, 0) == errno.EEXIST


def test_read_into_transport_buffers(pt):
    export, c = pt
    (export / "f").write_bytes(bytes(range(256)) * 8)
    c.ok(M.Twalk, 0, 1, ("f",))
    c.ok(M.Tlopen, 1, C.L_O_RDONLY)
    bufs = [bytearray(5), bytearray(300), bytearray(4096)]  # header split across segments
    got: queue.Queue = queue.Queue()
    c.s.submit(M.encode(M.Tread(77, 1, 10, 1000)), got.put, alloc=lambda n: [memoryview(b) for b in bufs])
    n = got.get(timeout=DEADLINE)
    assert n == 11 + 1000
    frame = bytes(b"".join(bufs))[:n]
    r = M.decode(frame)
    assert r.tag == 77 and r.data.tobytes() == (bytes(range(256)) * 8)[10:1010]


def test_limits_max_open_files_and_fids(tree):
    (tree / "f").write_bytes(b"")
    srv, c = make(tree, limits=Limits(max_fids=3, max_open_files=1))
    c.ok(M.Twalk, 0, 1, ("f",))
    c.ok(M.Twalk, 0, 2, ("f",))
    assert c.err(M.Twalk, 0, 3, ("f",)) == errno.EMFILE
    c.ok(M.Tlopen, 1, C.L_O_RDONLY)
    assert c.err(M.Tlopen, 2, C.L_O_RDONLY) == errno.EMFILE
    c.ok(M.Tclunk, 1)
    c.ok(M.Tlopen, 2, C.L_O_RDONLY)
    srv.close()


# -- namespace -----------------------------------------------------------------------

def test_renameat_updates_fids_below_the_renamed_dir(pt):
    export, c = pt
    (export / "a" / "b").mkdir(parents=True)
    (export / "a" / "b" / "f").write_bytes(b"x")
    c.ok(M.Twalk, 0, 1, ("a", "b", "f"))
    c.ok(M.Trenameat, 0, "a", 0, "z")
    c.s.fds.clear()  # the new path must be what a fresh walk uses
    assert c.s.fids.get(1).path == b"z/b/f"
    assert c.ok(M.Tgetattr, 1, C.GETATTR_BASIC).size == 1
    c.ok(M.Twalk, 0, 2, ("z",))
    c.ok(M.Trename, 2, 0, "y")
    assert c.s.fids.get(1).path == b"y/b/f"


def test_tremove_clunks_even_on_failure(pt):
    export, c = pt
    (export / "d").mkdir()
    (export / "d" / "x").write_bytes(b"")
    c.ok(M.Twalk, 0, 1, ("d",))
    assert c.err(M.Tremove, 1) == errno.ENOTEMPTY
    assert c.err(M.Tgetattr, 1, C.GETATTR_BASIC) == errno.ENOENT
    c.ok(M.Twalk, 0, 1, ("d", "x"))
    c.ok(M.Tremove, 1)
    assert not (export / "d" / "x").exists()
    assert c.err(M.Tremove, 0) == errno.EBUSY  # the root is never removed


def test_link_symlink_readlink_mkdir(pt):
    export, c = pt
    (export / "f").write_bytes(b"x")
    c.ok(M.Twalk, 0, 1, ("f",))
    c.ok(M.Tlink, 0, 1, "hard")
    assert os.stat(export / "hard").st_ino == os.stat(export / "f").st_ino
    assert c.ok(M.Tsymlink, 0, "sl", "f", 0).qid.type == C.QTSYMLINK
    c.ok(M.Twalk, 0, 2, ("sl",))
    assert c.ok(M.Treadlink, 2).target == "f"
    assert c.err(M.Treadlink, 1) == errno.EINVAL
    assert c.ok(M.Tmkdir, 0, "dd", 0o750, 0).qid.type == C.QTDIR
    assert stat.S_IMODE(os.stat(export / "dd").st_mode) == 0o750


# -- readdir ---------------------------------------------------------------------------

def _readdir_all(c, fid, count):
    names, offset, calls = [], 0, 0
    while True:
        r = c.ok(M.Treaddir, fid, offset, count)
        calls += 1
        assert len(r.data) <= count
        ents = list(unpack_dirents(r.data))
        if not ents:
            return names, calls
        names += [e.name for e in ents]
        offset = ents[-1].offset


def test_readdir_10000_entries_in_small_calls(pt):
    export, c = pt
    d = export / "big"
    d.mkdir()
    want = {f"entry-{i:05d}" for i in range(10000)}
    for n in want:
        (d / n).touch()
    c.ok(M.Twalk, 0, 1, ("big",))
    c.ok(M.Tlopen, 1, C.L_O_RDONLY)
    names, calls = _readdir_all(c, 1, 300)
    assert calls > 500
    names = [n for n in names if n not in (".", "..")]
    assert len(names) == len(set(names)) == 10000
    assert set(names) == want


def test_readdir_cookies_resume_on_another_fid(pt):
    export, c = pt
    for i in range(50):
        (export / f"n{i}").touch()
    c.ok(M.Twalk, 0, 1, ())
    c.ok(M.Tlopen, 1, C.L_O_RDONLY)
    c.ok(M.Twalk, 0, 2, ())
    c.ok(M.Tlopen, 2, C.L_O_RDONLY)
    first = list(unpack_dirents(c.ok(M.Treaddir, 1, 0, 200).data))
    rest = list(unpack_dirents(c.ok(M.Treaddir, 2, first[-1].offset, 65000).data))
    names = [e.name for e in first + rest]
    assert len(names) == len(set(names)) == 52


# -- xattrs ----------------------------------------------------------------------------

def _set_xattr(c, fid, name, value, flags=0):
    c.ok(M.Twalk, 0, 50, () if fid == 0 else ("f",))
    c.ok(M.Txattrcreate, 50, name, len(value), flags)
    for off in range(0, len(value), 8000):
        c.ok(M.Twrite, 50, off, value[off:off + 8000])
    return c.call(M.Tclunk(c.next_tag(), 50))


def _get_xattr(c, name):
    c.ok(M.Twalk, 0, 51, ("f",))
    r = c.call(M.Txattrwalk(c.next_tag(), 51, 52, name))
    c.ok(M.Tclunk, 51)
    if isinstance(r, M.Rlerror):
        return r
    out = b""
    while len(out) < r.size:
        out += c.ok(M.Tread, 52, len(out), 8000).data.tobytes()
    c.ok(M.Tclunk, 52)
    return out


def test_xattr_set_get_list_remove_64k(pt):
    export, c = pt
    (export / "f").write_bytes(b"")
    value = os.urandom(64 * 1024)
    try:
        os.setxattr(export / "f", "user.probe", value)
        os.removexattr(export / "f", "user.probe")
    except OSError as e:
        pytest.skip(f"host filesystem refuses 64 KiB xattr values: {e}")
    assert isinstance(_set_xattr(c, 1, "user.big", value), M.Rclunk)
    assert os.getxattr(export / "f", "user.big") == value
    assert _get_xattr(c, "user.big") == value
    assert b"user.big\0" in _get_xattr(c, "")
    assert isinstance(_set_xattr(c, 1, "user.big", b"", C.XATTR_REPLACE), M.Rclunk)
    assert "user.big" not in os.listxattr(export / "f")
    c.ok(M.Twalk, 0, 60, ())
    assert c.err(M.Txattrcreate, 60, "user.x", 64 * 1024 + 1, 0) == errno.E2BIG


# -- security models ------------------------------------------------------------------

def test_mapped_xattr_on_disk_format_and_reserved_names(tree):
    srv, c = make(tree, "mapped-xattr")
    c.ok(M.Twalk, 0, 1, ())
    c.ok(M.Tlcreate, 1, "f", C.L_O_RDWR, 0o644, 1234)
    c.attach(9, uid=1000)
    c.ok(M.Tmkdir, 9, "d", 0o755, 1001)
    c.ok(M.Tsymlink, 9, "l", "target/x", 1002)
    c.ok(M.Tmknod, 9, "cdev", stat.S_IFCHR | 0o600, 4, 5, 1003)
    u32 = lambda p, n: struct.unpack("<I", os.getxattr(tree / p, "user.virtfs." + n))[0]
    assert (u32("f", "uid"), u32("f", "gid"), u32("f", "mode")) == (0, 1234, stat.S_IFREG | 0o644)
    assert (u32("d", "uid"), u32("d", "gid"), u32("d", "mode")) == (1000, 1001, stat.S_IFDIR | 0o755)
    assert stat.S_IMODE(os.stat(tree / "d").st_mode) == 0o700
    assert stat.S_ISREG(os.lstat(tree / "l").st_mode) and (tree / "l").read_bytes() == b"target/x"
    assert u32("l", "mode") == stat.S_IFLNK | 0o777
    assert struct.unpack("<Q", os.getxattr(tree / "cdev", "user.virtfs.rdev"))[0] == os.makedev(4, 5)
    assert stat.S_ISREG(os.lstat(tree / "cdev").st_mode)
    c.ok(M.Twalk, 0, 2, ("l",))
    assert c.ok(M.Tgetattr, 2, C.GETATTR_BASIC).qid.type == C.QTSYMLINK
    assert c.ok(M.Treadlink, 2).target == "target/x"
    c.ok(M.Twalk, 0, 3, ("cdev",))
    r = c.ok(M.Tgetattr, 3, C.GETATTR_BASIC)
    assert (stat.S_ISCHR(r.mode), r.rdev, r.uid, r.gid) == (True, os.makedev(4, 5), 1000, 1003)
    # user.virtfs.* is invisible and untouchable
    c.ok(M.Twalk, 0, 4, ("f",))
    assert c.err(M.Txattrwalk, 4, 5, "user.virtfs.uid") == errno.ENODATA
    r = c.ok(M.Txattrwalk, 4, 5, "")
    assert b"virtfs" not in c.ok(M.Tread, 5, 0, 4096).data.tobytes()
    c.ok(M.Twalk, 0, 6, ("f",))
    assert c.err(M.Txattrcreate, 6, "user.virtfs.uid", 4, 0) == errno.EACCES
    c.ok(M.Tsetattr, 1, C.SETATTR_MODE | C.SETATTR_UID, 0o600, 77, 0, 0, 0, 0, 0, 0)
    assert (u32("f", "uid"), u32("f", "mode")) == (77, stat.S_IFREG | 0o600)
    srv.close()


def test_mapped_file_on_disk_format_and_reserved_names(tree):
    srv, c = make(tree, "mapped-file")
    c.attach(9, uid=1000)
    c.ok(M.Tmkdir, 9, "d", 0o755, 1001)
    c.ok(M.Twalk, 9, 1, ("d",))
    c.ok(M.Tlcreate, 1, "f", C.L_O_RDWR, 0o640, 1002)
    meta = (tree / "d" / ".virtfs_metadata" / "f").read_bytes()
    assert meta == b"virtfs.uid=1000\nvirtfs.gid=1002\nvirtfs.mode=%d\n" % (stat.S_IFREG | 0o640)
    assert (tree / ".virtfs_metadata" / "d").read_bytes().startswith(b"virtfs.uid=1000\nvirtfs.gid=1001\n")
    # QEMU-written metadata is read back as is
    (tree / "q").write_bytes(b"")
    (tree / ".virtfs_metadata" / "q").write_bytes(b"virtfs.uid=5\nvirtfs.gid=6\nvirtfs.mode=33261\n")
    c.ok(M.Twalk, 0, 2, ("q",))
    r = c.ok(M.Tgetattr, 2, C.GETATTR_BASIC)
    assert (r.uid, r.gid, r.mode) == (5, 6, 33261)
    for name in (".virtfs_metadata", ".virtfs_metadata_root"):
        assert c.err(M.Twalk, 0, 3, (name,)) == errno.EINVAL
        assert c.err(M.Tmkdir, 0, name, 0o755, 0) == errno.EINVAL
        assert c.err(M.Tunlinkat, 0, name, 0) == errno.EINVAL
    c.ok(M.Twalk, 0, 4, ())
    c.ok(M.Tlopen, 4, C.L_O_RDONLY)
    names = [e.name for e in unpack_dirents(c.ok(M.Treaddir, 4, 0, 8192).data)]
    assert ".virtfs_metadata" not in names and "q" in names
    # rename and unlink carry the metadata along
    c.ok(M.Trenameat, 0, "q", 9, "q2")
    assert (tree / ".virtfs_metadata" / "q2").exists() and not (tree / ".virtfs_metadata" / "q").exists()
    c.ok(M.Tunlinkat, 0, "q2", 0)
    assert not (tree / ".virtfs_metadata" / "q2").exists()
    c.ok(M.Tclunk, 1)
    c.ok(M.Twalk, 9, 10, ("d",))
    c.ok(M.Tunlinkat, 10, "f", 0)
    assert not (tree / "d" / ".virtfs_metadata" / "f").exists()
    c.ok(M.Tclunk, 10)
    c.ok(M.Tunlinkat, 0, "d", C.AT_REMOVEDIR)
    assert not (tree / "d").exists()
    srv.close()


def test_none_model_ignores_chown_failure(tree):
    srv, c = make(tree, "none")
    c.attach(5, uid=123456)
    c.ok(M.Tmkdir, 5, "d", 0o755, 654321)
    assert (tree / "d").is_dir()
    srv.close()


# -- locks and flush -------------------------------------------------------------------

def _open(c, fid, name):
    c.ok(M.Twalk, 0, fid, (name,))
    c.ok(M.Tlopen, fid, C.L_O_RDWR)


def test_lock_conflicts_between_two_sessions_and_clunk_releases(pt):
    export, c = pt
    (export / "f").write_bytes(b"")
    c2 = Conn(c.s.server)
    c2.attach()
    _open(c, 1, "f")
    _open(c2, 1, "f")
    assert c.ok(M.Tlock, 1, C.LOCK_TYPE_WRLCK, 0, 0, 10, 1, "a").status == C.LOCK_SUCCESS
    assert c2.ok(M.Tlock, 1, C.LOCK_TYPE_RDLCK, 0, 5, 1, 2, "b").status == C.LOCK_BLOCKED
    r = c2.ok(M.Tgetlock, 1, C.LOCK_TYPE_WRLCK, 0, 0, 2, "b")
    assert (r.type, r.start, r.length, r.proc_id, r.client_id) == (C.LOCK_TYPE_WRLCK, 0, 10, 1, "a")
    c.ok(M.Tclunk, 1)
    assert c2.ok(M.Tlock, 1, C.LOCK_TYPE_WRLCK, 0, 0, 0, 2, "b").status == C.LOCK_SUCCESS


def test_blocking_lock_waits_and_is_granted(pt):
    export, c = pt
    (export / "f").write_bytes(b"")
    c2 = Conn(c.s.server)
    c2.attach()
    _open(c, 1, "f")
    _open(c2, 1, "f")
    c.ok(M.Tlock, 1, C.LOCK_TYPE_WRLCK, 0, 0, 0, 1, "a")
    q = c2.send(M.Tlock(40, 1, C.LOCK_TYPE_WRLCK, C.LOCK_FLAGS_BLOCK, 0, 0, 2, "b"))
    assert q.empty()
    c.ok(M.Tlock, 1, C.LOCK_TYPE_UNLCK, 0, 0, 0, 1, "a")
    assert M.decode(q.get(timeout=DEADLINE)).status == C.LOCK_SUCCESS


def test_flush_of_a_blocked_lock(pt):
    export, c = pt
    (export / "f").write_bytes(b"")
    c2 = Conn(c.s.server)
    c2.attach()
    _open(c, 1, "f")
    _open(c2, 1, "f")
    c.ok(M.Tlock, 1, C.LOCK_TYPE_WRLCK, 0, 0, 0, 1, "a")
    q = c2.send(M.Tlock(40, 1, C.LOCK_TYPE_WRLCK, C.LOCK_FLAGS_BLOCK, 0, 0, 2, "b"))
    assert isinstance(c2.call(M.Tflush(41, 40)), M.Rflush)
    c.ok(M.Tclunk, 1)  # would have granted the waiter
    assert q.empty()  # the flushed Tlock never gets an Rlock
    assert c.s.server.locks.locks((os.stat(export / "f").st_dev, os.stat(export / "f").st_ino)) == []


def _blocking_session(pt, pool_size=1):
    export, c = pt
    started, release = threading.Event(), threading.Event()
    table = dict(c.s._table)

    def slow(s, m, req):
        started.set()
        assert release.wait(DEADLINE)
        return M.Rfsync(m.tag)
    table[M.Tfsync] = slow
    c.s._table = table
    return c, started, release


def test_flush_of_a_running_request_waits_for_its_reply(pt):
    c, started, release = _blocking_session(pt)
    order: queue.Queue = queue.Queue()
    c.s.submit(M.encode(M.Tfsync(30, 0, 0)), order.put)
    assert started.wait(DEADLINE)
    c.s.submit(M.encode(M.Tflush(31, 30)), order.put)
    assert order.empty()
    release.set()
    first, second = M.decode(order.get(timeout=DEADLINE)), M.decode(order.get(timeout=DEADLINE))
    assert isinstance(first, M.Rfsync) and first.tag == 30
    assert isinstance(second, M.Rflush) and second.tag == 31


def test_a_request_that_outlives_close_leaves_no_fid_or_fd(tree):
    """Session.close() while a request runs on an I/O thread: what that request makes afterwards (a fid,
    a cached fd) is clunked when it ends. Found by dispatch fuzzing as fds of the export growing slowly."""
    srv = Server(LocalBackend(str(tree)), pool_size=1)
    c = Conn(srv)
    c.attach()
    (tree / "f").write_bytes(b"x")
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    table = dict(c.s._table)
    attach, walk = table[M.Tattach], table[M.Twalk]

    def slow_then_walk(s, m, req):
        started.set()
        assert release.wait(DEADLINE)
        # As a request that had looked up its fids before close(): makes fids and caches fds after it.
        assert isinstance(attach(s, M.Tattach(m.tag, 5, M.NOFID, "root", "", 0), req), M.Rattach)
        assert isinstance(walk(s, M.Twalk(m.tag, 5, 6, ("f",)), req), M.Rwalk)
        assert s.fids.count() == 2 and len(s.fds) > 0
        done.set()
        return M.Rfsync(m.tag)
    table[M.Tfsync] = slow_then_walk
    c.s._table = table
    c.s.submit(M.encode(M.Tfsync(30, 0, 0)), lambda r: None)
    assert started.wait(DEADLINE)
    before = set(os.listdir("/proc/self/fd"))
    c.s.close()
    release.set()
    assert done.wait(DEADLINE)
    srv.pool.close()  # joins the I/O thread: the request has ended
    assert c.s.fids.count() == 0 and len(c.s.fds) == 0
    assert set(os.listdir("/proc/self/fd")) <= before


def test_flush_of_a_queued_request_drops_it(tree):
    srv = Server(LocalBackend(str(tree)), pool_size=1)
    c = Conn(srv)
    c.attach()
    c, started, release = _blocking_session((tree, c))
    out: queue.Queue = queue.Queue()
    c.s.submit(M.encode(M.Tfsync(30, 0, 0)), out.put)
    assert started.wait(DEADLINE)
    dropped: queue.Queue = queue.Queue()
    c.s.submit(M.encode(M.Tfsync(32, 0, 0)), dropped.put)  # queued behind the busy thread
    assert isinstance(c.call(M.Tflush(33, 32)), M.Rflush)
    assert isinstance(c.call(M.Tflush(34, 999)), M.Rflush)  # unknown tag: at once
    release.set()
    assert M.decode(out.get(timeout=DEADLINE)).tag == 30
    c.ok(M.Tclunk, 0)  # everything before has run by now...
    srv.pool.close()  # ...and the pool drained: the dropped request was never answered
    assert dropped.empty()


def test_many_requests_in_flight(pt):
    export, c = pt
    (export / "f").write_bytes(b"y" * 4096)
    _open(c, 1, "f")
    qs = [c.send(M.Tread(100 + i, 1, i, 10)) for i in range(64)]
    for i, q in enumerate(qs):
        r = M.decode(q.get(timeout=DEADLINE))
        assert r.tag == 100 + i and r.data.tobytes() == b"y" * 10


def test_qid_paths_unique_across_devices():
    m = QidPathMap(root_dev=10)
    assert m.path(10, 5) == 5
    a, b = m.path(11, 5), m.path(12, 5)
    assert len({5, a, b}) == 3
    assert m.path(11, 5) == a
    big = m.path(10, 1 << 60)
    assert big not in (5, a, b) and m.path(10, 1 << 60) == big and m.path(11, 1 << 60) != big


def test_mapped_xattr_keeps_guest_acls_under_user_virtfs(tree):
    srv, c = make(tree, "mapped-xattr")
    (tree / "f").write_bytes(b"")
    acl = b"\x02\x00\x00\x00\x01\x00\x06\x00\xff\xff\xff\xff"
    try:
        os.setxattr(tree / "f", "user.probe", b"1")
    except OSError as e:
        pytest.skip(f"host filesystem has no user xattrs: {e}")
    c.ok(M.Twalk, 0, 1, ("f",))
    c.ok(M.Txattrcreate, 1, "system.posix_acl_access", len(acl), 0)
    c.ok(M.Twrite, 1, 0, acl)
    c.ok(M.Tclunk, 1)
    assert os.getxattr(tree / "f", "user.virtfs.system.posix_acl_access") == acl
    c.ok(M.Twalk, 0, 2, ("f",))
    size = c.ok(M.Txattrwalk, 2, 3, "").size
    names = c.ok(M.Tread, 3, 0, size).data.tobytes().split(b"\0")
    assert b"system.posix_acl_access" in names and not any(n.startswith(b"user.virtfs") for n in names)
    srv.close()


def test_session_cancel_and_drop_stale_fds(pt):
    export, c = pt
    (export / "f").write_bytes(b"")
    c2 = Conn(c.s.server)
    c2.attach()
    _open(c, 1, "f")
    _open(c2, 1, "f")
    c.ok(M.Tlock, 1, C.LOCK_TYPE_WRLCK, 0, 0, 0, 1, "a")
    q = c2.send(M.Tlock(40, 1, C.LOCK_TYPE_WRLCK, C.LOCK_FLAGS_BLOCK, 0, 0, 2, "b"))
    assert c2.s.cancel(40) and not c2.s.cancel(40)
    c.ok(M.Tclunk, 1)
    assert q.empty()
    # A fid removed behind the session's back (another ring clunked it): its fds go.
    assert len(c2.s.fds) >= 1
    c2.s.fids.clear()
    assert c2.s.drop_stale_fds() >= 1 and len(c2.s.fds) == 0


def test_socket_transport_serves_a_connection(tree):
    from xen9p_common.p9 import FrameBuffer
    from xen9p_worker.transport_socket import SocketTransport, parse_listen

    assert parse_listen("unix:/x") == ("unix", "/x")
    assert parse_listen("tcp:127.0.0.1:564") == ("tcp", ("127.0.0.1", 564))
    assert parse_listen("fd:3") == ("fd", 3)
    for bad in ("nope", "tcp:1.2.3.4", "fd:x", "unix:"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    (tree / "f").write_bytes(b"data")
    srv = Server(LocalBackend(str(tree)))
    a, b = socket.socketpair()
    t = SocketTransport(srv, b)
    th = threading.Thread(target=t.serve)
    th.start()
    msgs = [M.Tversion(M.NOTAG, 65536, "9P2000.L"), M.Tattach(1, 0, M.NOFID, "", "", 0),
            M.Twalk(2, 0, 1, ("f",))]
    a.sendall(b"".join(M.encode(m) for m in msgs))
    fb, got = FrameBuffer(), []
    a.settimeout(DEADLINE)
    while len(got) < 3:
        fb.feed(a.recv(65536))
        got += [M.decode(f) for f in fb.frames()]
    assert [type(r) for r in got] == [M.Rversion, M.Rattach, M.Rwalk]
    a.close()  # the inherited connection ends: serve() returns
    th.join(DEADLINE)
    assert not th.is_alive()
    srv.close()


def test_tversion_withdraws_a_blocked_lock(pt):
    export, c = pt
    (export / "f").write_bytes(b"")
    c2 = Conn(c.s.server)
    c2.attach()
    _open(c, 1, "f")
    _open(c2, 1, "f")
    c.ok(M.Tlock, 1, C.LOCK_TYPE_WRLCK, 0, 0, 0, 1, "a")
    q = c2.send(M.Tlock(40, 1, C.LOCK_TYPE_WRLCK, C.LOCK_FLAGS_BLOCK, 0, 0, 2, "b"))
    c2.call(M.Tversion(M.NOTAG, 65536, "9P2000.L"))
    c.ok(M.Tclunk, 1)
    assert q.empty()
    st = os.stat(export / "f")
    assert c.s.server.locks.locks((st.st_dev, st.st_ino)) == []  # no lock granted to a dead fid


def test_open_fid_reopened_after_its_fd_was_dropped(pt):
    export, c = pt
    (export / "f").write_bytes(b"abc")
    _open(c, 1, "f")
    c.s.fds.clear()  # e.g. another process serves this fid: it reopens from the entry
    assert c.ok(M.Tread, 1, 0, 10).data.tobytes() == b"abc"


def test_holder_hook_checks_the_object(pt):
    from xen9p_worker.fidfds import open_slot
    export, c = pt
    (export / "f").write_bytes(b"abc")
    (export / "g").write_bytes(b"other")
    _open(c, 1, "f")
    e = c.s.fids.get(1)
    g_fd = os.open(export / "g", os.O_RDONLY)
    try:
        # fid 1 "held" by another process whose fd number now names g: refused, the path is used.
        fake = e.copy(holder_pid=os.getpid(), holder_fd=g_fd)
        c.s.pid = -1
        c.s.fds.clear()
        slot = open_slot(c.s, 1, fake)
        try:
            assert os.pread(slot.fd, 10, 0) == b"abc"
        finally:
            c.s.fds.release(slot)
        # ...and a holder fd that is the right file is used as is (unlinked files stay reachable).
        f_fd = os.open(export / "f", os.O_RDONLY)
        os.unlink(export / "f")
        c.s.fds.clear()
        slot = open_slot(c.s, 1, e.copy(holder_pid=os.getpid(), holder_fd=f_fd))
        try:
            assert os.pread(slot.fd, 10, 0) == b"abc"
        finally:
            c.s.fds.release(slot)
        os.close(f_fd)
    finally:
        os.close(g_fd)


def test_tag_reused_from_inside_the_reply_is_served_and_a_racing_flush_follows_the_reply(pt, caplog):
    # Linux frees a tag as soon as it reads the reply and may reuse it at once; a Tflush that
    # crossed the reply must still get its Rflush after that reply, never before it.
    _tree, c = pt  # fid 0 is attached to the export root
    order: list = []
    second: queue.Queue = queue.Queue()

    def first_reply(frame):
        order.append(("reply", M.decode(frame)))
        # Tflush of the tag whose reply is being delivered right now, then a reuse of that tag.
        c.s.submit(M.encode(M.Tflush(201, 100)), lambda f: order.append(("flush", M.decode(f))))
        c.s.submit(M.encode(M.Tgetattr(100, 0, C.GETATTR_BASIC)), second.put)

    with caplog.at_level("WARNING", logger="xen9p_worker.dispatch"):
        c.s.submit(M.encode(M.Tgetattr(100, 0, C.GETATTR_BASIC)), first_reply)
        again = M.decode(second.get(timeout=DEADLINE))
    assert isinstance(again, M.Rgetattr) and again.tag == 100
    kinds = [k for k, _ in order]
    assert kinds == ["reply", "flush"], order
    assert isinstance(order[1][1], M.Rflush) and order[1][1].tag == 201
    assert not [r for r in caplog.records if "reused" in r.getMessage()]
