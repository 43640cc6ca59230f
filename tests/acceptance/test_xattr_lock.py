"""Acceptance: extended attributes (Txattrwalk/Txattrcreate) and POSIX byte-range locks (Tlock/Tgetlock).

Runs against xen9p and diod unless marked.
"""
from __future__ import annotations

import errno
import os

import pytest

from xen9p_sim.client import Flushed, P9Error
from xen9p_common.p9 import constants as c

from .helpers import raises_errno


def _file(env, name="f", data=b""):
    (env.host / name).write_bytes(data)
    return env.root.walk(name)


def test_xattr_set_get_list_remove(env):
    with _file(env) as f:
        f.xattr_set("user.color", b"blue")
        assert f.xattr_get("user.color") == b"blue"
        assert "user.color" in f.xattr_list()
        assert os.getxattr(env.host / "f", "user.color") == b"blue"
        f.xattr_set("user.color", b"red", c.XATTR_REPLACE)
        assert f.xattr_get("user.color") == b"red"
        f.xattr_remove("user.color")
        with raises_errno(errno.ENODATA):
            f.xattr_get("user.color")
        assert "user.color" not in f.xattr_list()


def test_xattr_create_and_replace_flags(env):
    with _file(env) as f:
        with pytest.raises(P9Error):
            f.xattr_set("user.none", b"v", c.XATTR_REPLACE)
        f.xattr_set("user.once", b"1", c.XATTR_CREATE)
        with pytest.raises(P9Error):
            f.xattr_set("user.once", b"2", c.XATTR_CREATE)
        assert f.xattr_get("user.once") == b"1"


def test_xattr_written_on_the_host_is_read(env):
    with _file(env) as f:
        os.setxattr(env.host / "f", "user.host", b"\x00\x01binary\xff")
        assert f.xattr_get("user.host") == b"\x00\x01binary\xff"


def test_xattr_64k_value(env):
    probe = env.host / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.p", b"x" * 65536)
    except OSError:
        pytest.skip("the host filesystem under the export cannot hold a 64 KiB xattr")
    value = os.urandom(65536)
    with _file(env) as f:
        f.xattr_set("user.big", value)  # Txattrcreate + several Twrites + Tclunk
        assert os.getxattr(env.host / "f", "user.big") == value
        assert f.xattr_get("user.big") == value


def test_xattr_missing_is_enodata(env):
    with _file(env) as f:
        with raises_errno(errno.ENODATA):
            f.xattr_get("user.missing")


def test_xattr_on_a_directory(env):
    env.root.xattr_set("user.dir", b"yes")
    assert env.root.xattr_get("user.dir") == b"yes"
    assert os.getxattr(env.host, "user.dir") == b"yes"


# --- locks ------------------------------------------------------------------

def _two_opens(env):
    (env.host / "lk").write_bytes(b"x" * 100)
    return env.root.open_path("lk", c.L_O_RDWR), env.root.open_path("lk", c.L_O_RDWR)


def test_lock_conflict_between_two_owners(env):
    a, b = _two_opens(env)
    try:
        assert a.lock(c.LOCK_TYPE_WRLCK, 0, 10, proc_id=1, client_id="A") == c.LOCK_SUCCESS
        assert b.lock(c.LOCK_TYPE_WRLCK, 5, 10, proc_id=2, client_id="B") == c.LOCK_BLOCKED
        assert b.lock(c.LOCK_TYPE_RDLCK, 0, 1, proc_id=2, client_id="B") == c.LOCK_BLOCKED
        assert b.getlock(c.LOCK_TYPE_WRLCK, 0, 10, proc_id=2, client_id="B").type == c.LOCK_TYPE_WRLCK
        assert a.lock(c.LOCK_TYPE_UNLCK, 0, 10, proc_id=1, client_id="A") == c.LOCK_SUCCESS
        assert b.lock(c.LOCK_TYPE_WRLCK, 5, 10, proc_id=2, client_id="B") == c.LOCK_SUCCESS
        g = a.getlock(c.LOCK_TYPE_WRLCK, 0, 0, proc_id=1, client_id="A")
        assert g.type == c.LOCK_TYPE_WRLCK
    finally:
        a.clunk()
        b.clunk()


@pytest.mark.diod_differs("locks are whole-file (flock): byte ranges are ignored")
def test_lock_ranges_that_do_not_overlap_are_independent(env):
    a, b = _two_opens(env)
    try:
        assert a.lock(c.LOCK_TYPE_WRLCK, 0, 10, proc_id=1, client_id="A") == c.LOCK_SUCCESS
        assert b.lock(c.LOCK_TYPE_WRLCK, 10, 5, proc_id=2, client_id="B") == c.LOCK_SUCCESS
        assert b.lock(c.LOCK_TYPE_WRLCK, 9, 1, proc_id=2, client_id="B") == c.LOCK_BLOCKED
        g = b.getlock(c.LOCK_TYPE_WRLCK, 0, 0, proc_id=2, client_id="B")
        assert (g.type, g.start, g.length) == (c.LOCK_TYPE_WRLCK, 0, 10)
        # Unlocking part of a range splits it.
        assert a.lock(c.LOCK_TYPE_UNLCK, 0, 5, proc_id=1, client_id="A") == c.LOCK_SUCCESS
        assert b.lock(c.LOCK_TYPE_WRLCK, 0, 5, proc_id=2, client_id="B") == c.LOCK_SUCCESS
        assert b.lock(c.LOCK_TYPE_WRLCK, 5, 1, proc_id=2, client_id="B") == c.LOCK_BLOCKED
    finally:
        a.clunk()
        b.clunk()


def test_read_locks_are_shared(env):
    a, b = _two_opens(env)
    try:
        assert a.lock(c.LOCK_TYPE_RDLCK, 0, 0, proc_id=1, client_id="A") == c.LOCK_SUCCESS
        assert b.lock(c.LOCK_TYPE_RDLCK, 0, 0, proc_id=2, client_id="B") == c.LOCK_SUCCESS
        assert b.getlock(c.LOCK_TYPE_RDLCK, 0, 0, proc_id=2, client_id="B").type == c.LOCK_TYPE_UNLCK
        assert b.lock(c.LOCK_TYPE_WRLCK, 0, 0, proc_id=2, client_id="B") == c.LOCK_BLOCKED
    finally:
        a.clunk()
        b.clunk()


@pytest.mark.diod_differs("locks are whole-file (flock): Rgetlock reports start 0 length 0")
def test_getlock_reports_the_holder(env):
    a, b = _two_opens(env)
    try:
        assert a.lock(c.LOCK_TYPE_WRLCK, 10, 20, proc_id=77, client_id="holder") == c.LOCK_SUCCESS
        g = b.getlock(c.LOCK_TYPE_RDLCK, 0, 0, proc_id=2, client_id="asker")
        assert (g.type, g.start, g.length) == (c.LOCK_TYPE_WRLCK, 10, 20)
        assert g.proc_id == 77
        # No conflict: the type comes back as F_UNLCK.
        assert a.getlock(c.LOCK_TYPE_WRLCK, 0, 0, proc_id=77, client_id="holder").type == c.LOCK_TYPE_UNLCK
    finally:
        a.clunk()
        b.clunk()


def test_clunk_releases_locks(env):
    a, b = _two_opens(env)
    assert a.lock(c.LOCK_TYPE_WRLCK, 0, 0, proc_id=1, client_id="A") == c.LOCK_SUCCESS
    a.clunk()
    try:
        assert b.lock(c.LOCK_TYPE_WRLCK, 0, 0, proc_id=2, client_id="B") == c.LOCK_SUCCESS
    finally:
        b.clunk()


@pytest.mark.xen9p_only(reason="diod answers a conflicting blocking Tlock with LOCK_BLOCKED at once")
def test_flush_of_a_blocked_lock_request(env):
    a, b = _two_opens(env)
    try:
        assert a.lock(c.LOCK_TYPE_WRLCK, 0, 0, proc_id=1, client_id="A") == c.LOCK_SUCCESS
        fut = b.lock_async(c.LOCK_TYPE_WRLCK, 0, 0, proc_id=2, client_id="B", flags=c.LOCK_FLAGS_BLOCK)
        with pytest.raises(TimeoutError):
            fut.result(timeout=0.5)  # it must block while A holds the lock
        env.client.flush(fut.tag, timeout=10)
        try:
            status = fut.result(timeout=0)
        except Flushed:
            status = None
        assert status in (None, c.LOCK_BLOCKED)  # never granted behind A's back
        a.lock(c.LOCK_TYPE_UNLCK, 0, 0, proc_id=1, client_id="A")
        # The flushed request must not take the lock later: a third owner gets it.
        with env.root.open_path("lk", c.L_O_RDWR) as third:
            assert third.lock(c.LOCK_TYPE_WRLCK, 0, 0, proc_id=3, client_id="C") == c.LOCK_SUCCESS
        # The connection still works.
        assert env.root.getattr().qid.type == c.QTDIR
    finally:
        a.clunk()
        b.clunk()


@pytest.mark.xen9p_only(reason="diod does not block on Tlock")
def test_blocking_lock_is_granted_when_released(env):
    a, b = _two_opens(env)
    try:
        assert a.lock(c.LOCK_TYPE_WRLCK, 0, 0, proc_id=1, client_id="A") == c.LOCK_SUCCESS
        fut = b.lock_async(c.LOCK_TYPE_WRLCK, 0, 0, proc_id=2, client_id="B", flags=c.LOCK_FLAGS_BLOCK)
        with pytest.raises(TimeoutError):
            fut.result(timeout=0.3)
        a.lock(c.LOCK_TYPE_UNLCK, 0, 0, proc_id=1, client_id="A")
        assert env.client.wait(fut, timeout=10).status == c.LOCK_SUCCESS
    finally:
        a.clunk()
        b.clunk()


def test_conflicting_blocking_lock_is_not_granted(env):
    """Whatever the server does with BLOCK (wait, or answer BLOCKED), it never grants a conflict."""
    a, b = _two_opens(env)
    try:
        assert a.lock(c.LOCK_TYPE_WRLCK, 0, 0, proc_id=1, client_id="A") == c.LOCK_SUCCESS
        fut = b.lock_async(c.LOCK_TYPE_WRLCK, 0, 0, proc_id=2, client_id="B", flags=c.LOCK_FLAGS_BLOCK)
        try:
            r = fut.result(timeout=0.5)
            assert r.status == c.LOCK_BLOCKED
        except TimeoutError:
            env.client.flush(fut.tag, timeout=10)
    finally:
        a.clunk()
        b.clunk()
