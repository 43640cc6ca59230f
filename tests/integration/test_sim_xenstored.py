"""The simulated xenstored through our two XenStore implementations: semantics, guests, quotas, failures."""
from __future__ import annotations

import errno
import os
import select
import socket
import threading

import pytest

from xen9p_common.errors import XenStoreError
from xen9p_common.platform import Perm, WatchEvent
from xen9p_sim.xenstore.xenstored import XenstoredServer
from xen9p_common.platform.xen.xenstore import PyxsXenStore, find_socket, open_xenstore, socket_candidates
from xen9p_common.platform.xswire import HEADER, XsType, XsWireClient, pack_message
from tests.integration.xs_fixtures import (dom0, make_guest, small_xenstored,  # noqa: F401
                                           xenstored, xs_dir)
from tests.waiting import wait_for


@pytest.fixture(params=["wire", "pyxs"])
def store(request, xenstored):
    s = XsWireClient(xenstored.socket_path, timeout=5) if request.param == "wire" else \
        PyxsXenStore(xenstored.socket_path, timeout=5)
    yield s
    s.close()


def errno_of(fn, *args):
    with pytest.raises(XenStoreError) as ei:
        fn(*args)
    return ei.value.errno


def drain(store, timeout=0.3):
    out = []
    while (ev := store.wait_event(timeout)) is not None:
        out.append(ev)
    return out


# -- basic node semantics (both clients) ---------------------------------------

def test_read_write_empty_and_missing(store):
    store.write("/t/a", "")
    store.write("/t/b", "value with spaces")
    assert store.read("/t/a") == ""
    assert store.read("/t/b") == "value with spaces"
    assert store.read("/t/missing") is None
    assert store.read("/t") == ""  # implicit parent, empty value
    assert sorted(store.list("/t")) == ["a", "b"]
    assert store.list("/t/a") == []
    assert errno_of(store.list, "/nope") == errno.ENOENT


def test_non_ascii_value_roundtrip(store):
    store.write("/u", "h\u00e9llo")
    assert store.read("/u") == "h\u00e9llo"


def test_mkdir_keeps_existing_value(store):
    store.write("/m", "keep")
    store.mkdir("/m")
    store.mkdir("/m/x/y")
    assert store.read("/m") == "keep"
    assert store.read("/m/x/y") == ""


def test_rm_semantics(store):
    store.write("/r/a/b", "1")
    store.rm("/r/a")
    assert store.read("/r/a/b") is None and store.list("/r") == []
    store.rm("/r/gone")  # missing node, parent exists: fine
    assert errno_of(store.rm, "/r/gone/deeper") == errno.ENOENT
    assert errno_of(store.rm, "/") == errno.EINVAL


def test_perms_roundtrip_and_inheritance(store):
    store.write("/p", "")
    store.set_perms("/p", [Perm("n", 0), Perm("r", 3), Perm("w", 4), Perm("b", 5)])
    assert store.get_perms("/p") == [Perm("n", 0), Perm("r", 3), Perm("w", 4), Perm("b", 5)]
    store.write("/p/child/grandchild", "x")
    assert store.get_perms("/p/child/grandchild") == store.get_perms("/p")


def test_invalid_path_rejected(store):
    assert errno_of(store.read, "/a//b") == errno.EINVAL
    assert errno_of(store.write, "/bad path", "x") == errno.EINVAL


def test_transaction_commit_and_abort(store):
    assert store.transaction(lambda t: (t.write("/tx/a", "1"), t.mkdir("/tx/d"), t.list("/tx"))[2]) == ["a", "d"]
    assert store.read("/tx/a") == "1"

    class Boom(Exception):
        pass

    def fail(t):
        t.write("/tx/b", "2")
        raise Boom

    with pytest.raises(Boom):
        store.transaction(fail)
    assert store.read("/tx/b") is None


def test_transaction_sees_own_writes_in_isolation(store, dom0):
    seen = {}

    def fn(t):
        t.write("/iso/x", "inside")
        seen["inside"] = t.read("/iso/x")
        seen["outside"] = dom0.read("/iso/x")

    store.transaction(fn)
    assert seen == {"inside": "inside", "outside": None}
    assert dom0.read("/iso/x") == "inside"


def test_transaction_retries_on_conflict(store, dom0):
    store.write("/cnt", "0")
    calls = []

    def bump(t):
        v = int(t.read("/cnt"))
        if not calls:
            dom0.write("/cnt", "100")  # a racing writer between our read and our commit
        calls.append(v)
        t.write("/cnt", str(v + 1))

    store.transaction(bump)
    assert calls == [0, 100]
    assert store.read("/cnt") == "101"


def test_transaction_gives_up_after_retries(store, dom0):
    store.write("/hot", "0")

    def always_conflicts(t):
        t.read("/hot")
        dom0.write("/hot", str(os.urandom(2).hex()))
        t.write("/hot", "mine")

    assert errno_of(store.transaction, always_conflicts, 2) == errno.EAGAIN


def test_watch_initial_fire_prefix_and_order(store, dom0):
    store.watch("/w/a", "tok")
    assert store.wait_event(2) == WatchEvent("/w/a", "tok")
    for p in ("/w/a", "/w/ab", "/w/a/b", "/w/a/c", "/w/x"):
        dom0.write(p, "1")
    assert drain(store) == [WatchEvent("/w/a", "tok"), WatchEvent("/w/a/b", "tok"), WatchEvent("/w/a/c", "tok")]
    store.unwatch("/w/a", "tok")
    dom0.write("/w/a", "2")
    assert store.wait_event(0.2) is None


def test_rm_fires_watches_below(store, dom0):
    dom0.write("/rmw/x/y", "1")
    store.watch("/rmw/x/y/z", "deep")
    store.watch("/rmw", "top")
    assert set(drain(store)) == {WatchEvent("/rmw/x/y/z", "deep"), WatchEvent("/rmw", "top")}
    dom0.rm("/rmw/x")
    assert set(drain(store)) == {WatchEvent("/rmw/x/y/z", "deep"), WatchEvent("/rmw/x", "top")}


def test_transaction_events_fire_on_commit_only(store, dom0):
    dom0.watch("/te", "t")
    assert dom0.wait_event(2) == WatchEvent("/te", "t")

    def fn(t):
        t.write("/te/a", "1")
        assert dom0.wait_event(0.1) is None

    store.transaction(fn)
    assert dom0.wait_event(2) == WatchEvent("/te/a", "t")


def test_event_fd_readable_while_events_queued(store, dom0):
    fd = store.event_fd()
    assert select.select([fd], [], [], 0)[0] == []
    store.watch("/efd", "t")
    assert select.select([fd], [], [], 2)[0] == [fd]
    assert store.wait_event(1) == WatchEvent("/efd", "t")
    assert select.select([fd], [], [], 0)[0] == []


def test_domain_paths(dom0):
    assert dom0.get_domain_path(7) == "/local/domain/7"
    assert dom0.is_domain_introduced(0)
    assert not dom0.is_domain_introduced(7)
    dom0.introduce_domain(7)
    assert dom0.is_domain_introduced(7)


def test_boot_tree(dom0):
    assert dom0.read("/local/domain/0/name") == "Domain-0"
    assert dom0.list("/tool") == ["xenstored"]


def test_directory_part_for_big_directories(dom0):
    names = [f"child-with-a-long-name-{i:04d}" for i in range(300)]  # ~9 KiB of names

    def fill(t):
        for n in names:
            t.write(f"/big/{n}", "")

    dom0.transaction(fill)
    assert sorted(dom0.list("/big")) == names


# -- guests --------------------------------------------------------------------

def test_guest_confined(xenstored, dom0):
    guest = make_guest(xenstored, dom0, 5)
    other = make_guest(xenstored, dom0, 6)
    try:
        guest.write("device/9pfs/0/state", "1")  # relative to /local/domain/5
        assert dom0.read("/local/domain/5/device/9pfs/0/state") == "1"
        assert dom0.get_perms("/local/domain/5/device/9pfs/0/state") == [Perm("n", 5), Perm("r", 0)]
        other.write("secret", "x")
        assert errno_of(guest.read, "/local/domain/6/secret") == errno.EACCES
        assert errno_of(guest.write, "/local/domain/6/secret", "y") == errno.EACCES
        assert errno_of(guest.read, "/local/domain/0/name") == errno.EACCES
        # Missing nodes under an unreadable parent answer EACCES, not ENOENT (no information leak).
        assert errno_of(guest.read, "/local/domain/6/nothing") == errno.EACCES
        assert guest.read("nothing") is None
        assert errno_of(guest.write, "/toplevel", "x") == errno.EACCES
        # A guest may not give its node away, nor remove dom0's nodes.
        assert errno_of(guest.set_perms, "secret2", [Perm("n", 6)]) in (errno.ENOENT,)
        guest.write("mine", "1")
        assert errno_of(guest.set_perms, "mine", [Perm("n", 6)]) == errno.EPERM
        guest.set_perms("mine", [Perm("n", 5), Perm("r", 6)])
        assert other.read("/local/domain/5/mine") == "1"
        assert errno_of(other.write, "/local/domain/5/mine", "2") == errno.EACCES
        assert errno_of(guest.rm, "/local/domain/0") == errno.EACCES
        assert errno_of(guest.introduce_domain, 9) == errno.EACCES
    finally:
        guest.close()
        other.close()


def test_guest_relative_watch_and_filtered_events(xenstored, dom0):
    guest = make_guest(xenstored, dom0, 5)
    try:
        guest.watch("device", "rel")
        assert guest.wait_event(2) == WatchEvent("device", "rel")
        dom0.write("/local/domain/5/device/x", "1")
        assert guest.wait_event(2) == WatchEvent("device/x", "rel")
        guest.watch("/local/domain/0", "denied")
        assert guest.wait_event(2) == WatchEvent("/local/domain/0", "denied")  # initial fire always
        dom0.write("/local/domain/0/hidden", "1")  # guest cannot read it: no event
        assert guest.wait_event(0.2) is None
    finally:
        guest.close()


def test_introduce_release_and_special_watches(xenstored, dom0):
    dom0.watch("@introduceDomain", "in")
    dom0.watch("@releaseDomain", "out")
    assert set(drain(dom0)) == {WatchEvent("@introduceDomain", "in"), WatchEvent("@releaseDomain", "out")}
    guest = make_guest(xenstored, dom0, 8)
    assert dom0.wait_event(2) == WatchEvent("@introduceDomain", "in")
    guest.write("x", "1")
    dom0.release_domain(8)
    assert dom0.wait_event(2) == WatchEvent("@releaseDomain", "out")
    assert not dom0.is_domain_introduced(8)
    assert not os.path.exists(xenstored.domain_socket(8))
    wait_for(lambda: not guest.alive, what="guest connection closed")
    assert errno_of(guest.read, "x") in (errno.ECONNRESET, errno.EBADF, errno.EPIPE)
    assert errno_of(dom0.release_domain, 8) == errno.ENOENT
    guest.close()


# -- quotas ----------------------------------------------------------------------

def test_quotas(small_xenstored):
    with XsWireClient(small_xenstored.socket_path, timeout=5) as d0:
        guest = make_guest(small_xenstored, d0, 4)
        try:
            assert errno_of(guest.write, "big", "x" * 65) == errno.ENOSPC
            d0.write("/dom0-may-exceed", "x" * 1000)  # dom0 is exempt
            for i in range(3):
                guest.watch(f"w{i}", "t")
            assert errno_of(guest.watch, "w3", "t") == errno.E2BIG
            t1, t2 = guest.start_transaction(), guest.start_transaction()
            assert errno_of(guest.start_transaction) == errno.ENOSPC
            guest.end_transaction(t1, commit=False)
            guest.end_transaction(t2, commit=False)
            with pytest.raises(XenStoreError) as ei:
                for i in range(30):
                    guest.write(f"n{i}", "")
            assert ei.value.errno == errno.ENOSPC
        finally:
            guest.close()


# -- protocol details and malformed input ----------------------------------------

def _raw_conn(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def _recv_msg(s):
    hdr = b""
    while len(hdr) < 16:
        chunk = s.recv(16 - len(hdr))
        if not chunk:
            return None
        hdr += chunk
    mtype, req_id, tx_id, n = HEADER.unpack(hdr)
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return mtype, req_id, tx_id, body


def test_raw_protocol_replies(xenstored):
    with _raw_conn(xenstored.socket_path) as s:
        s.sendall(pack_message(XsType.WRITE, 11, 0, b"/raw\0abc"))
        assert _recv_msg(s) == (XsType.WRITE, 11, 0, b"OK\0")
        s.sendall(pack_message(XsType.READ, 12, 0, b"/raw\0"))
        assert _recv_msg(s) == (XsType.READ, 12, 0, b"abc")  # value without a NUL
        s.sendall(pack_message(XsType.READ, 13, 0, b"/none\0"))
        assert _recv_msg(s) == (XsType.ERROR, 13, 0, b"ENOENT\0")
        s.sendall(pack_message(99, 14, 0, b""))
        assert _recv_msg(s) == (XsType.ERROR, 14, 0, b"EINVAL\0")
        s.sendall(pack_message(XsType.WRITE, 15, 0, b"no-nul-at-all"))
        assert _recv_msg(s) == (XsType.ERROR, 15, 0, b"EINVAL\0")
        s.sendall(pack_message(XsType.READ, 16, 99, b"/raw\0"))  # unknown transaction
        assert _recv_msg(s) == (XsType.ERROR, 16, 99, b"ENOENT\0")
        s.sendall(pack_message(XsType.TRANSACTION_START, 17, 0, b"\0"))
        mtype, _, _, body = _recv_msg(s)
        assert mtype == XsType.TRANSACTION_START and body.endswith(b"\0") and int(body[:-1]) > 0
        s.sendall(pack_message(XsType.DIRECTORY_PART, 18, 0, b"/\0" + b"0\0"))
        mtype, _, _, body = _recv_msg(s)
        gen, rest = body.split(b"\0", 1)
        assert mtype == XsType.DIRECTORY_PART and gen.isdigit() and rest.endswith(b"\0\0")


def test_malformed_frame_closes_only_that_connection(xenstored, dom0):
    with _raw_conn(xenstored.socket_path) as s:
        s.sendall(HEADER.pack(XsType.WRITE, 1, 0, 5000) + b"x" * 100)
        assert _recv_msg(s) is None  # closed
    with _raw_conn(xenstored.socket_path) as s:
        s.sendall(os.urandom(7))
        s.shutdown(socket.SHUT_WR)
        _recv_msg(s)
    dom0.write("/still", "up")
    assert dom0.read("/still") == "up"


# -- failure of the daemon: errors, never hangs -----------------------------------

def test_dead_xenstored_gives_errors(xs_dir):
    server = XenstoredServer(os.path.join(xs_dir, "s2")).start()
    c = XsWireClient(server.socket_path, timeout=5)
    p = PyxsXenStore(server.socket_path, timeout=5)
    c.write("/x", "1")
    assert p.read("/x") == "1"
    server.stop()
    wait_for(lambda: not c.alive, what="client noticing")
    assert errno_of(c.read, "/x") == errno.ECONNRESET
    assert errno_of(c.wait_event, 1) == errno.ECONNRESET
    assert select.select([c.event_fd()], [], [], 0)[0] == [c.event_fd()]
    assert errno_of(p.read, "/x") in (errno.ECONNRESET, errno.ETIMEDOUT)
    c.close()
    p.close()


def test_silent_xenstored_times_out(xs_dir):
    path = os.path.join(xs_dir, "mute")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(4)
    accepted = []
    t = threading.Thread(target=lambda: accepted.extend(lsock.accept() for _ in range(2)), daemon=True)
    t.start()
    try:
        c = XsWireClient(path, timeout=0.3)
        p = PyxsXenStore(path, timeout=0.3)
        assert errno_of(c.read, "/x") == errno.ETIMEDOUT
        assert errno_of(p.read, "/x") == errno.ETIMEDOUT
        c.close()
        p.close()
    finally:
        lsock.close()
        for conn, _ in accepted:
            conn.close()


def test_connect_failure_is_xenstore_error(xs_dir):
    assert errno_of(XsWireClient, os.path.join(xs_dir, "absent")) == errno.ENOENT


def test_open_xenstore_prefers_socket(xenstored, xs_dir):
    env = {"XENSTORED_PATH": xenstored.socket_path}
    assert socket_candidates(env)[0] == xenstored.socket_path
    assert find_socket(env) == xenstored.socket_path
    s = open_xenstore(timeout=5, env=env)
    try:
        assert isinstance(s, PyxsXenStore)
        assert s.read("/local/domain/0/name") == "Domain-0"
    finally:
        s.close()
    rundir_env = {"XENSTORED_RUNDIR": os.path.dirname(xenstored.socket_path)}
    assert socket_candidates(rundir_env)[0] == os.path.join(xs_dir, "socket")
