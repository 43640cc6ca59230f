"""The Mini-OS-like 9P session on a scripted transport: request slots as tags, the fid bitmap, reply checks."""
from __future__ import annotations

import errno
import queue

import pytest

from xen9p_sim.client import P9Error, RpcTimeout
from xen9p_common.p9 import messages as m
from xen9p_sim.client.transport import Transport
from xen9p_sim.frontend.minios_session import N_FIDS, MiniOSSession


class Scripted(Transport):
    """Answers each request with answer(request) (a message, or None for no reply)."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.sent: list[m.Message] = []
        self._q: queue.Queue = queue.Queue()

    def send(self, frame: bytes) -> None:
        req = m.decode(frame)
        self.sent.append(req)
        r = self.answer(req)
        if r is not None:
            self._q.put(m.encode(r))

    def recv_frame(self):
        return self._q.get()

    def close(self) -> None:
        self._q.put(None)


def ok(req):
    if isinstance(req, m.Twalk):
        return m.Rwalk(req.tag, tuple(m.Qid(0, 0, 1) for _ in req.wnames))
    if isinstance(req, m.Tclunk):
        return m.Rclunk(req.tag)
    if isinstance(req, m.Tremove):
        return m.Rremove(req.tag)
    if isinstance(req, m.Tversion):
        return m.Rversion(req.tag, min(req.msize, 8192), "9P2000.u")
    return m.Rerror(req.tag, "Operation not supported", errno.EOPNOTSUPP)


@pytest.fixture
def session():
    s = MiniOSSession(Scripted(ok), timeout=5)
    yield s
    s.close()


def test_tversion_goes_under_an_ordinary_tag_and_sets_msize(session):
    assert session.version(16384) == 8192 and session.msize == 8192
    tv = session.transport.sent[0]
    assert isinstance(tv, m.Tversion) and tv.tag != m.NOTAG and tv.tag < 64 and tv.version == "9P2000.u"


def test_fids_are_the_lowest_free_of_the_bitmap_and_come_back_on_clunk_and_remove(session):
    a, b, c = session.walk("x"), session.walk("y"), session.walk("z")
    assert (a, b, c) == (1, 2, 3)
    session.clunk(b)
    assert session.walk("w") == 2
    session.remove(a)
    assert session.new_fid() == 1 and session.fids_in_use == {1, 2, 3}
    for _ in range(N_FIDS - 3):
        session.new_fid()
    with pytest.raises(P9Error) as ei:
        session.new_fid()
    assert ei.value.errno == errno.ENFILE


def test_a_failed_clone_gives_its_fid_back():
    s = MiniOSSession(Scripted(lambda req: m.Rerror(req.tag, "no", errno.ENOENT)), timeout=5)
    try:
        with pytest.raises(P9Error):
            s.walk("a")
        assert s.fids_in_use == frozenset()
    finally:
        s.close()


def test_a_new_kernel_inherits_the_fids_in_use():
    s = MiniOSSession(Scripted(ok), timeout=5, fids_in_use=frozenset({1, 2}))
    try:
        assert s.new_fid() == 3
    finally:
        s.close()


def test_rerror_carries_errno_and_text_and_rlerror_is_a_wrong_return_type():
    def answer(req):
        if isinstance(req, m.Tstat):
            return m.Rlerror(req.tag, errno.EPERM)
        return m.Rerror(req.tag, "Permission denied", errno.EACCES)
    s = MiniOSSession(Scripted(answer), timeout=5)
    try:
        with pytest.raises(P9Error) as ei:
            s.call(m.Tclunk, 1)
        assert ei.value.errno == errno.EACCES and "Permission denied" in str(ei.value)
        with pytest.raises(P9Error) as ei:
            s.call(m.Tstat, 1)
        assert ei.value.errno == errno.EDOM and "wrong return type 7" in str(ei.value)
    finally:
        s.close()


def test_a_request_without_reply_keeps_its_slot():
    s = MiniOSSession(Scripted(lambda req: None if isinstance(req, m.Tclunk) else ok(req)), timeout=0.2)
    try:
        with pytest.raises(RpcTimeout):
            s.call(m.Tclunk, 1)
        lost = s.transport.sent[-1].tag
        for _ in range(2 * 64):  # every other slot comes round again and again; the lost one never
            s.call(m.Tversion, 8192, "9P2000.u")
        used = {r.tag for r in s.transport.sent[1:]}
        assert len(used) == 63 and lost not in used
    finally:
        s.close()
