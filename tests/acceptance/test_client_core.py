"""The client's own contract, against a scripted peer on a socketpair: tags, demultiplexing,
timeouts, a dead or silent server, Tflush races, fid numbering.
"""
from __future__ import annotations

import socket
import threading

import pytest

from xen9p_sim.client import (Client, ConnectionClosed, Flushed, P9Error, RpcTimeout, SocketTransport,
                                 UnexpectedReply)
from xen9p_common.errors import ProtocolError
from xen9p_common.p9 import messages as m
from xen9p_common.p9.stream import FrameBuffer


class Peer:
    """The server end of a socketpair: read requests, write chosen replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = FrameBuffer()
        self.ready: list[bytes] = []

    def recv(self, timeout: float = 5.0) -> m.Message:
        self.sock.settimeout(timeout)
        while not self.ready:
            data = self.sock.recv(65536)
            assert data, "client closed"
            self.buf.feed(data)
            self.ready.extend(self.buf.frames())
        return m.decode(self.ready.pop(0))

    def send(self, msg: m.Message) -> None:
        self.sock.sendall(m.encode(msg))


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    client = Client(SocketTransport(a), timeout=5)
    peer = Peer(b)
    yield client, peer
    client.close()
    b.close()


def test_version_uses_notag_and_requests_get_distinct_tags(pair):
    client, peer = pair
    fut = client.rpc_async(m.Tversion, 8192, "9P2000.L")
    req = peer.recv()
    assert req.tag == m.NOTAG
    peer.send(m.Rversion(m.NOTAG, 8192, "9P2000.L"))
    assert client.wait(fut).msize == 8192
    futs = [client.rpc_async(m.Tclunk, i) for i in range(100)]
    tags = [peer.recv().tag for _ in futs]
    assert len(set(tags)) == 100 and m.NOTAG not in tags


def test_replies_out_of_order_reach_their_requests(pair):
    client, peer = pair
    futs = [client.rpc_async(m.Tstatfs, i) for i in range(20)]
    reqs = [peer.recv() for _ in futs]
    for r in reversed(reqs):
        peer.send(m.Rstatfs(r.tag, r.fid, 0, 0, 0, 0, 0, 0, 0, 0))
    for i, f in enumerate(futs):
        assert client.wait(f).type == i


def test_rlerror_raises_p9error_with_errno(pair):
    client, peer = pair
    fut = client.rpc_async(m.Tclunk, 1)
    peer.send(m.Rlerror(peer.recv().tag, 2))
    with pytest.raises(P9Error) as ei:
        client.wait(fut)
    assert ei.value.errno == 2 and isinstance(ei.value, ProtocolError)


def test_wrong_reply_type_is_an_error(pair):
    client, peer = pair
    fut = client.rpc_async(m.Tclunk, 1)
    peer.send(m.Rflush(peer.recv().tag))
    with pytest.raises(UnexpectedReply):
        client.wait(fut)


def test_silent_server_times_out(pair):
    client, peer = pair
    with pytest.raises(RpcTimeout):
        client.rpc(m.Tclunk, 1, timeout=0.2)
    assert isinstance(RpcTimeout("x"), TimeoutError)


def test_dead_server_fails_every_pending_request(pair):
    client, peer = pair
    futs = [client.rpc_async(m.Tclunk, i) for i in range(5)]
    peer.recv()
    peer.sock.close()
    for f in futs:
        with pytest.raises(ConnectionClosed):
            client.wait(f, timeout=5)
    with pytest.raises(ConnectionClosed):
        client.rpc(m.Tclunk, 9)


def test_garbage_from_server_closes_the_connection(pair):
    client, peer = pair
    fut = client.rpc_async(m.Tclunk, 1)
    peer.sock.sendall(b"\x03\x00\x00\x00garbage")  # size 3 < header: framing is lost
    with pytest.raises(ConnectionClosed):
        client.wait(fut)


def test_flush_before_reply_fails_the_request_and_frees_the_tag_after_rflush(pair):
    client, peer = pair
    fut = client.rpc_async(m.Tlock, 1, 1, 1, 0, 0, 1, "c")
    req = peer.recv()
    done = threading.Event()
    t = threading.Thread(target=lambda: (client.flush(fut.tag), done.set()))
    t.start()
    fl = peer.recv()
    assert isinstance(fl, m.Tflush) and fl.oldtag == req.tag and fl.tag != req.tag
    # Until Rflush arrives the old tag must not be reused.
    others = [client.rpc_async(m.Tclunk, i) for i in range(5)]
    assert req.tag not in [peer.recv().tag for _ in others]
    peer.send(m.Rflush(fl.tag))
    t.join(5)
    assert done.is_set()
    with pytest.raises(Flushed):
        fut.result(timeout=1)


def test_reply_that_races_the_flush_is_delivered(pair):
    client, peer = pair
    fut = client.rpc_async(m.Tclunk, 1)
    req = peer.recv()
    t = threading.Thread(target=client.flush, args=(fut.tag,))
    t.start()
    fl = peer.recv()
    peer.send(m.Rclunk(req.tag))  # the server finished first
    peer.send(m.Rflush(fl.tag))
    t.join(5)
    assert isinstance(fut.result(timeout=1), m.Rclunk)


def test_fid_numbers_are_reused_only_after_clunk(pair):
    client, peer = pair
    a = client.new_fid()
    b = client.new_fid()
    assert a.fid != b.fid and m.NOFID not in (a.fid, b.fid)
    threading.Thread(target=lambda: peer.send(m.Rclunk(peer.recv().tag))).start()
    a.clunk()
    assert not a.fid_valid and client.live_fids() == 1


def test_send_after_close_raises(pair):
    client, _ = pair
    client.close()
    with pytest.raises(ConnectionClosed):
        client.rpc(m.Tclunk, 1)
