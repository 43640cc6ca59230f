"""9P2000.u over the socket transport, in every security model: negotiation, the message set with
QEMU's semantics, Rerror for every error, Mini-OS's session shape, and bad .u input.

diod serves 9P2000.L only (its Tversion answers 9P2000.u with Rlerror EIO), so these run on xen9p.
"""
from __future__ import annotations

import errno
import os
import stat
import struct

import pytest

from xen9p_sim.client import P9Error
from xen9p_common.p9 import constants as c
from xen9p_common.p9 import messages as m
from xen9p_common.p9.stat import STAT_DONT_TOUCH, pack_stat

from .helpers import raises_errno
from .servers import MSIZE

pytestmark = pytest.mark.xen9p_only(reason="diod serves 9P2000.L only: its Tversion answers 9P2000.u with Rlerror(EIO)")
U = c.VERSION_9P2000U


@pytest.fixture
def u(server, env):
    """A second connection of the test speaking 9P2000.u: (client, fid on the test's directory)."""
    cl = server.connect_raw()
    r = cl.version(MSIZE, U)
    assert r.version == U
    top = server.attach(cl)
    d = top.walk([env.host.name])
    yield cl, d
    alive = not cl.closed
    cl.close()
    assert alive, f"{server.name} dropped the .u connection:\n{server.log_text()[-3000:]}"


def _rerror(ei, *errnos):
    assert ei.value.ename is not None, "a .u session got an Rlerror"
    assert len(ei.value.ename.encode()) <= 64
    if errnos:
        assert ei.value.errno in errnos, ei.value


def test_version_answers_exactly_9p2000u_and_unknown(server):
    cl = server.connect_raw()
    with cl:
        assert cl.version(MSIZE, "9P2000.u").version == "9P2000.u"
        assert cl.version(MSIZE, "9P2000.x").version == "unknown"
        assert cl.version(MSIZE, "9P2000.L").version == "9P2000.L"


def test_minios_shaped_session(server, env):
    """version under an ordinary tag, attach with afid 0, walk, create, write, read, stat, clunk,
    open, remove, and a re-init (Tversion alone) that keeps fid 0 usable."""
    cl = server.connect_raw()
    with cl:
        assert cl.version(16384, U, notag=False).version == U
        top = cl.attach(str(server.export), "root", 0, afid=0)
        d = top.walk([env.host.name])
        f = d.walk()
        with pytest.raises(P9Error) as ei:
            f.walk_raw(["log"], f)
        _rerror(ei, errno.ENOENT)
        f.create_raw("log", 0o644, c.ORDWR)
        assert f.write(b"hello minios", 0) == 12
        assert f.read(0, 100) == b"hello minios"
        st = f.stat()
        assert st.length == 12 and st.name == "log" and st.mode & 0o777 == 0o644
        assert not st.mode & c.DM_TYPE_BITS and st.extension == "HARDLINKCOUNT 1"
        f.clunk()
        g = d.walk(["log"]).open_u(c.OREAD | c.OTRUNC)
        assert g.read(0, 100) == b""  # OTRUNC
        g.clunk()
        cl.version(16384, U, notag=False, keep_fids=True)  # live update: fids stay
        q = top.stat().qid
        assert (q.type, q.path) == (top.qid.type, top.qid.path) and d.stat().name == env.host.name
        h = d.walk(["log"])
        h.remove()
        assert not (env.host / "log").exists()
        cl.version(8192, U, notag=False)  # another msize: a new session, every fid gone
        with pytest.raises(P9Error) as ei:
            top.fid_valid = True
            top.stat()
        _rerror(ei)


def test_errors_are_rerror_and_other_dialects_messages_refused(server, env, u):
    cl, d = u
    with pytest.raises(P9Error) as ei:
        d.getattr()  # 9P2000.L only
    _rerror(ei, errno.EOPNOTSUPP)
    with pytest.raises(P9Error) as ei:
        cl.wait(cl.rpc_raw_async(lambda tag: m.HEADER.pack(7 + 1, m.Tstat.TYPE, tag) + b"\x01"))  # short
    _rerror(ei, errno.EPROTO)
    with pytest.raises(P9Error) as ei:
        cl.wait(cl.rpc_raw_async(lambda tag: m.HEADER.pack(7, 106, tag)))  # no such type
    _rerror(ei, errno.EOPNOTSUPP)
    # In the .L session of the same server, .u-only messages get Rlerror.
    with pytest.raises(P9Error) as ei:
        env.root.stat()
    assert ei.value.ename is None and ei.value.errno == errno.EOPNOTSUPP
    assert d.stat().qid.type == c.QTDIR


def test_create_every_kind_and_stat_extensions(server, env, u):
    cl, d = u
    f = d.create_u("file", 0o640, c.ORDWR)
    f.write(b"abc", 0)
    d.make_u("dir", c.DMDIR | 0o750)
    d.make_u("sym", c.DMSYMLINK | 0o777, "file")
    d.make_u("hard", c.DMLINK, f"{f.fid}\n")
    d.make_u("fifo", c.DMNAMEDPIPE | 0o600)
    d.make_u("sock", c.DMSOCKET | 0o600)
    d.make_u("null", c.DMDEVICE | 0o600, "c 1 3")
    f.clunk()
    st = {n: d.walk([n]).stat() for n in ("file", "dir", "sym", "hard", "fifo", "sock", "null")}
    assert st["file"].extension == "HARDLINKCOUNT 2" and st["file"].qid.path == st["hard"].qid.path
    assert st["file"].length == 3 and st["file"].mode == 0o640
    assert st["dir"].mode == c.DMDIR | 0o750 and st["dir"].qid.type == c.QTDIR
    assert st["sym"].mode & c.DMSYMLINK and st["sym"].extension == "file" and st["sym"].qid.type == c.QTSYMLINK
    assert st["fifo"].mode & c.DMNAMEDPIPE and st["sock"].mode & c.DMSOCKET
    assert st["null"].mode & c.DMDEVICE and st["null"].extension == "c 1 3"
    h = env.host
    assert (h / "dir").is_dir() and (h / "hard").read_bytes() == b"abc"
    if not server.mapped:
        assert os.readlink(h / "sym") == "file" and stat.S_ISFIFO(os.lstat(h / "fifo").st_mode)
        assert stat.S_ISCHR(os.lstat(h / "null").st_mode) and os.lstat(h / "null").st_rdev == os.makedev(1, 3)
    else:  # special files exist only as metadata: never a host device
        assert stat.S_ISREG(os.lstat(h / "null").st_mode)
    # The .L view of the same objects agrees.
    assert stat.S_ISLNK(env.root.walk(["sym"]).getattr().mode)
    if not server.mapped:  # a host fifo is never opened (mapped models keep a plain file)
        with pytest.raises(P9Error) as ei:
            d.walk(["fifo"]).open_u(c.OREAD)
        _rerror(ei, errno.ENXIO)


def test_created_directory_is_open_and_reads_as_stat_records(server, env, u):
    cl, d = u
    sub = d.create_u("many", c.DMDIR | 0o755, c.OREAD)
    names = {f"entry-{i:04d}-{'x' * (i % 40)}" for i in range(300)}
    for n in names:
        (env.host / "many" / n).write_bytes(b"")
    recs = list(sub.read_stats(count=1000))  # small reads: many Treads, records never split
    assert {r.name for r in recs} == names
    assert all(r.extension == "HARDLINKCOUNT 1" and r.length == 0 for r in recs)
    sub.clunk()
    # Resumable at any record boundary, also on a fid that never read (the stream is replayed).
    a = d.walk(["many"]).open_u(c.OREAD)
    first = a.read_once(0, 2000)
    b = d.walk(["many"]).open_u(c.OREAD)
    rest = bytearray()
    off = len(first)
    while True:
        chunk = b.read_once(off, 3000)
        if not chunk:
            break
        rest += chunk
        off += len(chunk)
    from xen9p_common.p9.stat import unpack_stats
    assert {r.name for r in unpack_stats(first + bytes(rest))} == names
    with pytest.raises(P9Error) as ei:
        b.read_once(1, 3000)  # inside a record
    _rerror(ei, errno.EINVAL)
    with pytest.raises(P9Error) as ei:
        b.read_once(0, 10)  # not even one record fits
    _rerror(ei, errno.EINVAL)


def test_wstat_changes_and_dont_touch(server, env, u):
    cl, d = u
    f = d.create_u("w", 0o600, c.ORDWR)
    f.write(b"0123456789", 0)
    f.wstat()  # every field "don't touch": an fsync
    f.wstat(mode=0o604, mtime=1_000_000, atime=2_000_000, length=4)
    st = f.stat()
    assert (st.mode, st.mtime, st.atime, st.length) == (0o604, 1_000_000, 2_000_000, 4)
    f.wstat(n_uid=1234, n_gid=4321)
    st = f.stat()
    assert (st.n_uid, st.n_gid) == (1234, 4321)
    f.wstat(name="renamed")
    assert (env.host / "renamed").exists() and not (env.host / "w").exists()
    assert f.stat().name == "renamed" and f.read(0, 10) == b"0123"
    f.clunk()


def test_bad_wstat_and_create_change_nothing(server, env, u):
    cl, d = u
    f = d.create_u("keep", 0o600, c.ORDWR)
    before = f.stat()
    for bad in (dict(mode=c.DMDIR | 0o777), dict(mode=0o777, name="a/b"), dict(length=1, name="..")):
        with pytest.raises(P9Error) as ei:
            f.wstat(**bad)
        _rerror(ei)
        assert f.stat() == before
    # A stat record whose inner size disagrees with its fields.
    rec = bytearray(pack_stat(STAT_DONT_TOUCH._replace(mode=0o777)))
    struct.pack_into("<H", rec, 0, len(rec))
    body = struct.pack("<IH", f.fid, len(rec)) + bytes(rec)
    with pytest.raises(P9Error) as ei:
        cl.wait(cl.rpc_raw_async(lambda tag: m.HEADER.pack(7 + len(body), m.Twstat.TYPE, tag) + body))
    _rerror(ei, errno.EPROTO)
    assert f.stat() == before
    for perm, ext, err in ((c.DMDEVICE | 0o600, "x 1 2", errno.EINVAL), (c.DMDEVICE | 0o600, "c one", errno.EINVAL),
                           (c.DMLINK, "nofid", errno.EINVAL), (c.DMLINK, "987654\n", errno.EINVAL),
                           (c.DMLINK, f"{d.fid}\n", errno.EPERM)):
        with pytest.raises(P9Error) as ei:
            d.make_u("new", perm, ext)
        _rerror(ei, err)
        assert not os.path.lexists(env.host / "new")
    f.clunk()
    assert d.stat().qid.type == c.QTDIR


def test_orclose_removes_at_clunk(server, env, u):
    cl, d = u
    (env.host / "tmp").write_bytes(b"x")
    d.walk(["tmp"]).open_u(c.OREAD | c.ORCLOSE).clunk()
    assert not (env.host / "tmp").exists()
    f = d.create_u("tmp2", 0o600, c.ORDWR | c.ORCLOSE)
    assert (env.host / "tmp2").exists()
    f.clunk()
    assert not (env.host / "tmp2").exists()


def test_unikraft_shaped_dotl_session_creates_with_tcreate(server, env):
    """A .L session (afid NOFID, n_uname ~0) making a directory with the legacy Tcreate and
    removing with Tremove, as Unikraft's 9pfs does."""
    d = env.root
    with d.walk() as x:
        r = x.create_raw("ukdir", c.DMDIR | 0o755, c.OREAD, "")
        assert r.qid.type == c.QTDIR
    assert (env.host / "ukdir").is_dir()
    d.walk(["ukdir"]).remove()
    assert not (env.host / "ukdir").exists()
    with raises_errno(errno.EINVAL):
        d.walk().create_raw("bad", c.DMDEVICE, c.OREAD, "q")
