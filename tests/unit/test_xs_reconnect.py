"""ReconnectingXenStore: loses the connection once, answers ENOTCONN meanwhile, reconnects with backoff, re-arms watches."""
from __future__ import annotations

import errno
import os
import select

import pytest

from xen9p_common.errors import XenStoreError
from xen9p_supervisor.xs_reconnect import ReconnectingXenStore


class FakeXs:
    """A connection to a xenstored that `server` says is up or down."""

    def __init__(self, server: "FakeServer") -> None:
        self.server = server
        self.watches: list[tuple[str, str]] = []
        self.r, self.w = os.pipe()
        self.closed = False

    def _check(self) -> None:
        if self.closed or not self.server.up or self.server.generation != self.gen:
            raise XenStoreError(errno.ECONNRESET, "connection closed")

    def read(self, path: str) -> str | None:
        self._check()
        return self.server.nodes.get(path)

    def watch(self, path: str, token: str) -> None:
        self._check()
        self.watches.append((path, token))

    def unwatch(self, path: str, token: str) -> None:
        self._check()
        self.watches.remove((path, token))

    def wait_event(self, timeout: float):
        self._check()
        return None

    def event_fd(self) -> int:
        return self.r

    def is_domain_introduced(self, domid: int) -> bool:
        self._check()
        return domid == 1

    def close(self) -> None:
        self.closed = True
        os.close(self.r)
        os.close(self.w)


class FakeServer:
    def __init__(self) -> None:
        self.up = True
        self.generation = 0
        self.nodes = {"/a": "1"}
        self.conns: list[FakeXs] = []
        self.attempts = 0

    def connect(self) -> FakeXs:
        self.attempts += 1
        if not self.up:
            raise XenStoreError(errno.ENOENT, "cannot connect to xenstore")
        c = FakeXs(self)
        c.gen = self.generation
        self.conns.append(c)
        return c

    def restart(self) -> None:
        self.generation += 1


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def world():
    srv, clock = FakeServer(), Clock()
    xs = ReconnectingXenStore(srv.connect, clock=clock, retry_initial=0.1, retry_max=0.4)
    yield srv, clock, xs
    xs.close()


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_a_lost_connection_answers_enotconn_until_reconnected_then_rearms_every_watch(world):
    srv, clock, xs = world
    xs.watch("/a", "t1")
    xs.watch("/b", "t2")
    xs.unwatch("/b", "t2")
    fd = xs.event_fd()
    os.write(srv.conns[0].w, b"!")
    assert _readable(fd)  # the current client's events
    srv.restart()
    with pytest.raises(XenStoreError) as e:
        xs.read("/a")
    assert e.value.errno == errno.ECONNRESET and not xs.connected and xs.lost_total == 1
    with pytest.raises(XenStoreError) as e:
        xs.read("/a")
    assert e.value.errno == errno.ENOTCONN
    assert xs.wait_event(0) is None
    assert xs.event_fd() == fd and not _readable(fd)  # same number, not a dead client's readable pipe
    assert xs.reconnect_if_due()
    assert xs.connected and xs.read("/a") == "1"
    assert srv.conns[-1].watches == [("/a", "t1")]  # only the watch still wanted
    os.write(srv.conns[-1].w, b"!")
    assert _readable(fd)  # now the new client's events


def test_reconnect_attempts_back_off_doubling_to_the_cap(world):
    srv, clock, xs = world
    srv.up = False
    with pytest.raises(XenStoreError):
        xs.read("/a")
    tried_at = []
    for _ in range(200):  # 2 s of loop turns every 10 ms
        before = srv.attempts
        xs.reconnect_if_due()
        if srv.attempts != before:
            tried_at.append(round(clock.t - 100.0, 2))
        clock.t += 0.01
    gaps = [round(b - a, 2) for a, b in zip(tried_at, tried_at[1:])]
    assert gaps[:3] == [0.1, 0.2, 0.4] and set(gaps[3:]) == {0.4}
    srv.up = True
    clock.t = xs.next_deadline()
    assert xs.reconnect_if_due() and xs.next_deadline() is None


def test_watch_asked_for_while_disconnected_is_armed_on_reconnect(world):
    srv, clock, xs = world
    srv.restart()
    with pytest.raises(XenStoreError):
        xs.read("/a")
    with pytest.raises(XenStoreError):
        xs.watch("/new", "t")
    assert xs.reconnect_if_due()
    assert srv.conns[-1].watches == [("/new", "t")]


def test_platform_extras_pass_through_and_missing_ones_stay_missing(world):
    srv, clock, xs = world
    assert xs.is_domain_introduced(1) is True
    assert getattr(xs, "introduce_domain", None) is None
