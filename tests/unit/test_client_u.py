"""The 9P client's 9P2000.u side against a scripted peer on a socketpair: Rerror raises
P9Error with the server's errno and text, Tversion under an ordinary tag, keep_fids, and
the Twstat "don't touch" record."""
from __future__ import annotations

import errno
import socket

import pytest

from xen9p_sim.client import Client, P9Error, SocketTransport
from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as m
from xen9p_common.p9.stat import STAT_DONT_TOUCH
from xen9p_common.p9.stream import FrameBuffer
from xen9p_common.p9.wire import Qid


class Peer:
    """The server end: next_request() returns the decoded request; answer() sends a reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fb = FrameBuffer()
        self.ready: list[bytes] = []

    def next_request(self) -> m.Message:
        while not self.ready:
            data = self.sock.recv(65536)
            assert data, "client closed"
            self.fb.feed(data)
            self.ready.extend(self.fb.frames())
        return m.decode(self.ready.pop(0))

    def answer(self, msg: m.Message) -> None:
        self.sock.sendall(m.encode(msg))


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    b.settimeout(10)
    client = Client(SocketTransport(a), timeout=10)
    yield client, Peer(b)
    client.close()
    b.close()


def _serve_one(client, peer, call, reply_of):
    import threading
    out = {}

    def run():
        try:
            out["r"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["e"] = e

    t = threading.Thread(target=run)
    t.start()
    req = peer.next_request()
    peer.answer(reply_of(req))
    t.join(10)
    assert not t.is_alive()
    return req, out


def test_rerror_raises_p9error_with_errno_and_text(pair):
    client, peer = pair
    root = client.new_fid()
    req, out = _serve_one(client, peer, root.stat, lambda r: m.Rerror(r.tag, "No such file", errno.ENOENT))
    assert isinstance(req, m.Tstat) and req.fid == root.fid
    e = out["e"]
    assert isinstance(e, P9Error) and e.errno == errno.ENOENT and "No such file" in str(e)
    assert e.ename == "No such file"


def test_rerror_with_errno_zero_becomes_eio(pair):
    client, peer = pair
    f = client.new_fid()
    _, out = _serve_one(client, peer, lambda: f.open_u(C.OREAD), lambda r: m.Rerror(r.tag, "odd", 0))
    assert out["e"].errno == errno.EIO


def test_version_under_an_ordinary_tag_keeping_fids(pair):
    client, peer = pair
    f = client.new_fid()
    req, out = _serve_one(client, peer,
                          lambda: client.version(16384, C.VERSION_9P2000U, notag=False, keep_fids=True),
                          lambda r: m.Rversion(r.tag, 16384, C.VERSION_9P2000U))
    assert isinstance(req, m.Tversion) and req.tag != m.NOTAG and req.version == "9P2000.u"
    assert out["r"].version == "9P2000.u" and client.msize == 16384
    assert f.fid_valid and client.live_fids() == 1


def test_wstat_sends_dont_touch_except_the_changes(pair):
    client, peer = pair
    f = client.new_fid()
    req, out = _serve_one(client, peer, lambda: f.wstat(mode=0o600, length=5), lambda r: m.Rwstat(r.tag))
    assert "e" not in out
    assert req.stat == STAT_DONT_TOUCH._replace(mode=0o600, length=5)


def test_create_u_clones_then_creates(pair):
    client, peer = pair
    d = client.new_fid()
    import threading
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("f", d.create_u("x", 0o640, C.ORDWR, "")))
    t.start()
    walk = peer.next_request()
    assert isinstance(walk, m.Twalk) and walk.wnames == () and walk.fid == d.fid
    peer.answer(m.Rwalk(walk.tag, ()))
    create = peer.next_request()
    assert isinstance(create, m.Tcreate) and create.fid == walk.newfid
    assert (create.name, create.perm, create.mode, create.extension) == ("x", 0o640, C.ORDWR, "")
    peer.answer(m.Rcreate(create.tag, Qid(0, 0, 7), 8000))
    t.join(10)
    f = out["f"]
    assert f.fid == walk.newfid and f.opened and f.iounit == 8000
