"""The 9P2000.u server core driven in-process: limits (max-fids, max-open-files, max-files with
auto-delete, max-space on Twrite and Twstat), Tflush and many requests in flight, confinement,
and random .u frames that must only ever get Rerror (never Rlerror, never a crash)."""
from __future__ import annotations

import errno
import os
import queue
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M
from xen9p_common.p9.stat import STAT_DONT_TOUCH
from xen9p_worker.backend.local import LocalBackend
from xen9p_worker.dispatch import Limits, Server
from xen9p_worker.quota import Quota

DEADLINE = 10.0


class UConn:
    """A 9P2000.u session: call() waits for the reply of one request."""

    def __init__(self, server: Server, msize: int = 16384) -> None:
        self.s = server.session()
        self.tag = 0
        r = self.call(M.Tversion(1, msize, C.VERSION_9P2000U))
        assert r.version == C.VERSION_9P2000U
        self.ok(M.Tattach, 0, 0, "root", "", 0)

    def call(self, msg):
        q: queue.Queue = queue.Queue()
        self.s.submit(M.encode(msg), q.put)
        return M.decode(q.get(timeout=DEADLINE))

    def ok(self, cls, *args):
        self.tag = (self.tag + 1) % 0xFFFF
        r = self.call(cls(self.tag, *args))
        assert not isinstance(r, (M.Rerror, M.Rlerror)), f"{cls.__name__}{args}: {r}"
        return r

    def err(self, cls, *args) -> int:
        self.tag = (self.tag + 1) % 0xFFFF
        r = self.call(cls(self.tag, *args))
        assert isinstance(r, M.Rerror), f"{cls.__name__}{args}: {r}"
        return r.ecode


@pytest.fixture
def export(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "SECRET").write_text("no")
    return d


def make(export, **kw):
    srv = Server(LocalBackend(str(export), kw.pop("model", "passthrough")), pool_size=4, **kw)
    return srv, UConn(srv)


def test_open_files_and_fids_limits_cover_topen_and_tcreate(export):
    (export / "f").write_bytes(b"")
    srv, c = make(export, limits=Limits(max_fids=4, max_open_files=1))
    c.ok(M.Twalk, 0, 1, ("f",))
    c.ok(M.Twalk, 0, 2, ())
    c.ok(M.Topen, 1, C.OREAD)
    assert c.err(M.Tcreate, 2, "g", 0o644, C.ORDWR, "") == errno.EMFILE
    assert c.err(M.Tcreate, 2, "gd", C.DMDIR | 0o755, C.OREAD, "") == errno.EMFILE
    assert not (export / "g").exists() and not (export / "gd").exists()
    c.ok(M.Tclunk, 1)
    c.ok(M.Tcreate, 2, "g", 0o644, C.ORDWR, "")
    c.ok(M.Twalk, 0, 3, ())
    c.ok(M.Twalk, 0, 4, ())  # fids 0, 2, 3, 4: the limit
    assert c.err(M.Twalk, 0, 5, ()) == errno.EMFILE
    srv.close()


def test_max_files_with_and_without_auto_delete(export):
    srv, c = make(export)
    srv.quota = Quota(c.s.backend.root_fd, c.s.fids, max_files=2, auto_delete=False)
    c.ok(M.Twalk, 0, 1, ())
    c.ok(M.Tcreate, 1, "a", 0o644, C.ORDWR, "")
    c.ok(M.Twalk, 0, 2, ())
    c.ok(M.Tcreate, 2, "b", C.DMSYMLINK | 0o777, C.OREAD, "a")
    c.ok(M.Twalk, 0, 3, ())
    assert c.err(M.Tcreate, 3, "c", C.DMDIR | 0o755, C.OREAD, "") == errno.ENOSPC
    assert sorted(os.listdir(export)) == ["a", "b"]
    c.ok(M.Tclunk, 1)  # "a" no longer open: auto-delete may take it
    srv.quota = Quota(c.s.backend.root_fd, c.s.fids, max_files=2, auto_delete=True)
    c.ok(M.Tcreate, 3, "c", 0o644, C.ORDWR, "")
    assert "c" in os.listdir(export) and len(os.listdir(export)) == 2
    srv.close()


def test_max_space_on_twrite_and_twstat_length(export):
    srv, c = make(export, limits=Limits(max_space=1 << 20))
    c.ok(M.Twalk, 0, 1, ())
    c.ok(M.Tcreate, 1, "f", 0o644, C.ORDWR, "")
    c.ok(M.Twrite, 1, 0, b"x" * 1000)
    assert c.err(M.Twstat, 1, STAT_DONT_TOUCH._replace(length=64 << 20)) == errno.ENOSPC
    assert (export / "f").stat().st_size == 1000
    assert c.err(M.Twrite, 1, 32 << 20, b"y") == errno.ENOSPC
    c.ok(M.Twstat, 1, STAT_DONT_TOUCH._replace(length=10))
    assert (export / "f").stat().st_size == 10
    srv.close()


def test_max_space_counts_an_append_from_the_end_of_the_file_not_its_offset(export):
    srv, c = make(export, limits=Limits(max_space=1 << 20))
    c.ok(M.Twalk, 0, 1, ())
    c.ok(M.Tcreate, 1, "log", 0o644, C.ORDWR | C.OAPPEND, "")
    chunk = b"z" * 8000
    refused = None
    for i in range(400):  # 3.2 MB offered at offset 0: an append lands at the end, whatever the offset
        r = c.call(M.Twrite(5, 1, 0, chunk))
        if isinstance(r, M.Rerror):
            refused = (i, r.ecode)
            break
    assert refused is not None and refused[1] == errno.ENOSPC, refused
    assert (export / "log").stat().st_size <= 1 << 20
    assert refused[0] * len(chunk) == (export / "log").stat().st_size  # everything before the refusal landed
    srv.close()


def test_many_requests_in_flight_and_tflush(export):
    (export / "f").write_bytes(bytes(range(256)) * 64)
    srv, c = make(export)
    c.ok(M.Twalk, 0, 1, ("f",))
    c.ok(M.Topen, 1, C.OREAD)
    qs = []
    for i in range(32):
        q: queue.Queue = queue.Queue()
        c.s.submit(M.encode(M.Tread(100 + i, 1, i * 256, 256)), q.put)
        qs.append(q)
    for i, q in enumerate(qs):
        r = M.decode(q.get(timeout=DEADLINE))
        assert r.tag == 100 + i and bytes(r.data) == bytes(range(256))
    assert isinstance(c.call(M.Tflush(7, 4321)), M.Rflush)
    srv.close()


def test_confinement_walks_symlinks_and_special_files(export):
    os.symlink("../outside", export / "esc")
    os.mkfifo(export / "fifo")
    srv, c = make(export)
    r = c.ok(M.Twalk, 0, 1, ("..", ".."))
    q = c.ok(M.Tstat, 0).stat.qid
    assert (r.wqids[-1].type, r.wqids[-1].path) == (q.type, q.path)  # .. at the root stays there
    c.ok(M.Twalk, 0, 2, ("esc",))
    assert c.err(M.Topen, 2, C.OREAD) == errno.ELOOP  # a symlink is never followed
    assert len(c.ok(M.Twalk, 0, 3, ("esc", "SECRET")).wqids) == 1  # stops at the symlink
    assert c.err(M.Tstat, 3) == errno.ENOENT  # and the partial walk made no fid
    c.ok(M.Twalk, 0, 4, ("fifo",))
    assert c.err(M.Topen, 4, C.OREAD) == errno.ENXIO  # would block on a host fifo: never opened
    # A symlink made through Tcreate, pointing out, is still only a name.
    c.ok(M.Twalk, 0, 5, ())
    c.ok(M.Tcreate, 5, "out", C.DMSYMLINK | 0o777, C.OREAD, "/etc/passwd")
    assert c.ok(M.Tstat, 5).stat.extension == "/etc/passwd"
    assert c.err(M.Topen, 5, C.OREAD) == errno.ELOOP
    srv.close()


_U_TYPES = [M.Topen, M.Tcreate, M.Tstat, M.Twstat, M.Tread, M.Twrite, M.Twalk, M.Tclunk, M.Tremove,
            M.Tattach, M.Tflush, M.Tversion, M.Tgetattr, M.Tlopen, 106, 200]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=st.sampled_from(_U_TYPES), body=st.binary(max_size=90), fid=st.sampled_from([0, 1, 2, 0xFFFFFFFF]))
def test_random_u_frames_get_one_reply_never_rlerror(export, t, body, fid):
    srv = _FUZZ.get("srv")
    if srv is None:
        srv = _FUZZ["srv"] = Server(LocalBackend(str(export), "passthrough"), pool_size=2)
        _FUZZ["c"] = UConn(srv)
    c = _FUZZ["c"]
    mtype = t if isinstance(t, int) else t.TYPE
    if mtype == M.Tversion.TYPE:
        return  # a session reset is not what this fuzzes
    payload = struct.pack("<I", fid) + body
    frame = M.HEADER.pack(7 + len(payload), mtype, 9) + payload
    q: queue.Queue = queue.Queue()
    c.s.submit(frame, q.put)
    rep = q.get(timeout=DEADLINE)
    assert rep[4] != M.Rlerror.TYPE
    assert q.empty()
    r = c.call(M.Tstat(3, 0))  # still serving (a random Tclunk/Tremove may have taken fid 0)
    if isinstance(r, M.Rerror):
        assert r.ecode == errno.ENOENT
        c.ok(M.Tattach, 0, 0, "root", "", 0)
    else:
        assert isinstance(r, M.Rstat)


_FUZZ: dict = {}


@pytest.fixture(autouse=True)
def _fuzz_server_per_test():
    yield
    srv = _FUZZ.pop("srv", None)
    _FUZZ.pop("c", None)
    if srv is not None:
        srv.close()


def test_dmlink_to_a_fid_of_another_session_is_refused(export):
    (export / "f").write_bytes(b"x")
    srv, a = make(export)
    b = UConn(srv)
    a.ok(M.Twalk, 0, 50, ("f",))  # fid 50 exists in session a only
    b.ok(M.Twalk, 0, 1, ())
    assert b.err(M.Tcreate, 1, "l", C.DMLINK, C.OREAD, "50\n") == errno.EINVAL
    assert not (export / "l").exists() and (export / "f").stat().st_nlink == 1
    a.ok(M.Twalk, 0, 2, ())
    a.ok(M.Tcreate, 2, "l", C.DMLINK, C.OREAD, "50\n")  # in its own session it links
    assert (export / "f").stat().st_nlink == 2
    srv.close()


def test_tcreate_of_an_existing_file_opens_it_untouched(export):
    (export / "f").write_bytes(b"keep")
    os.chmod(export / "f", 0o604)
    if os.geteuid() == 0:
        os.chown(export / "f", 4321, 4321)
    (export / "d").mkdir()
    srv, c = make(export)
    c.ok(M.Twalk, 0, 1, ())
    r = c.ok(M.Tcreate, 1, "f", 0o600, C.ORDWR, "")  # QEMU's rule: no OEXCL, so it opens
    assert bytes(c.ok(M.Tread, 1, 0, 10).data) == b"keep"
    st = (export / "f").stat()
    assert st.st_mode & 0o777 == 0o604 and r.qid.path == c.ok(M.Tstat, 1).stat.qid.path
    if os.geteuid() == 0:
        assert st.st_uid == 4321  # the creator's owner is not forced onto an existing file
    c.ok(M.Twalk, 0, 2, ())
    assert c.err(M.Tcreate, 2, "f", 0o600, C.ORDWR | C.OEXCL, "") == errno.EEXIST
    assert c.err(M.Tcreate, 2, "d", 0o600, C.OREAD, "") == errno.EISDIR
    assert c.ok(M.Tstat, 2).stat.qid.type == C.QTDIR  # the fid is still the directory
    c.ok(M.Tcreate, 2, "g", 0o600, C.ORDWR | C.OTRUNC, "")
    srv.close()
