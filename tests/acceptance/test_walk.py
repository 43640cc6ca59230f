"""Acceptance: Twalk semantics and the hostile walks (symlinks, '..', renames under a walk).

The escape cases run only against xen9p: diod resolves host paths and follows symlinks by design.
"""
from __future__ import annotations

import errno
import os
import socket

import pytest

from xen9p_sim.client import ConnectionClosed, P9Error
from xen9p_common.p9 import constants as c
from xen9p_common.p9 import messages as m

from .helpers import ident, raises_errno

NOT_CONFINED = "diod resolves host paths with symlinks followed: it is not confined to the export"


def test_walk_with_no_names_clones(env):
    with env.root.walk() as clone:
        assert ident(clone.qid) == ident(env.root.qid)
        assert clone.fid != env.root.fid


@pytest.mark.diod_differs("a partially successful Twalk still sets newfid (to the last name reached)")
def test_walk_partial_success(env):
    (env.host / "a").mkdir()
    (env.host / "a" / "b").mkdir()
    newfid = env.client.new_fid()
    qids = env.root.walk_raw(["a", "b", "missing", "x"], newfid)
    assert len(qids) == 2 and all(q.type == c.QTDIR for q in qids)
    # Partial success leaves newfid unset: it is not usable and can be used as a newfid again.
    with pytest.raises(P9Error):
        env.client.rpc(m.Tgetattr, newfid.fid, c.GETATTR_BASIC)
    assert len(env.root.walk_raw(["a"], newfid)) == 1
    newfid.clunk()


def test_walk_first_name_missing_is_an_error(env):
    newfid = env.client.new_fid()
    with raises_errno(errno.ENOENT):
        env.root.walk_raw(["missing", "x"], newfid)
    newfid.forget()


def test_walk_in_place(env):
    (env.host / "d").mkdir()
    f = env.root.walk()
    qids = f.walk_raw(["d"])  # newfid == fid
    assert qids[0].type == c.QTDIR
    assert f.getattr().qid == qids[0]
    f.clunk()


def test_walk_more_than_16_names(env):
    path = env.host
    names = [f"d{i}" for i in range(20)]
    (path.joinpath(*names)).mkdir(parents=True)
    with env.root.walk(names) as deep:
        assert deep.qid.type == c.QTDIR
        assert ident(deep.getattr().qid) == ident(deep.qid)


def test_more_than_16_names_in_one_twalk_is_refused(env):
    """The codec cannot build it; a server must refuse it (Rlerror, or dropping the connection)."""
    cl, root = env.connect()
    with cl:
        def frame(tag):
            body = m.encode(m.Twalk(tag, root.fid, 4242, ("a",) * 16))[7:]
            body = body[:8] + (17).to_bytes(2, "little") + body[10:] + b"\x01\x00a"
            return m.HEADER.pack(7 + len(body), m.Twalk.TYPE, tag) + body

        fut = cl.rpc_raw_async(frame)
        with pytest.raises((P9Error, ConnectionClosed)):
            cl.wait(fut, timeout=10)


@pytest.mark.diod_differs("'..' at the export root walks up into the host's parent directories")
def test_dotdot_at_the_export_root_stays_at_the_root(env):
    with env.top.walk([".."] * 40) as up:
        assert ident(up.qid) == ident(env.top.qid)
    with env.root.walk([".."] * 25 + [env.host.name]) as back:
        assert ident(back.qid) == ident(env.root.qid)
    qids = env.top.walk_raw([".."] * 16, env.client.new_fid())
    assert all(ident(q) == ident(env.top.qid) for q in qids)


def test_dotdot_from_subdirectories(env):
    (env.host / "a" / "b").mkdir(parents=True)
    with env.root.walk(["a", "b", "..", ".."]) as same:
        assert ident(same.qid) == ident(env.root.qid)


def _outside_reachable(env, names) -> bool:
    try:
        f = env.top.walk(names)
    except P9Error:
        return False
    try:
        f.open(c.L_O_RDONLY)
        return b"outside" in f.read()
    except P9Error:
        return False
    finally:
        f.clunk()


@pytest.mark.xen9p_only(reason=NOT_CONFINED)
def test_symlink_to_slash_is_not_followed(env):
    os.symlink("/", env.host / "root-link")
    with env.root.walk("root-link") as ln:
        assert ln.qid.type == c.QTSYMLINK
        assert ln.readlink() == "/"
        with pytest.raises(P9Error):
            ln.walk("etc")
    with pytest.raises(P9Error):
        env.root.walk("root-link/etc/passwd")
    outside = env.server.outside
    assert not _outside_reachable(env, [env.host.name, "root-link", *outside.parts[1:], "SECRET"])


@pytest.mark.xen9p_only(reason=NOT_CONFINED)
def test_absolute_and_dotdot_symlinks_are_not_followed(env):
    os.symlink(str(env.server.outside), env.host / "abs")
    os.symlink("../../outside", env.host / "rel")
    os.symlink("/" + "../" * 20 + "etc", env.host / "dots")
    for name in ("abs", "rel"):
        assert not _outside_reachable(env, [env.host.name, name, "SECRET"])
    with pytest.raises(P9Error):
        env.root.walk("dots/passwd")
    with env.root.walk("rel") as ln:
        assert ln.readlink() == "../../outside"
        with pytest.raises(P9Error):
            ln.open(c.L_O_RDONLY)  # opening a symlink never follows it


@pytest.mark.xen9p_only(reason=NOT_CONFINED)
def test_rename_a_symlink_escape(env):
    """`ln -sf .. d/l; mv d/l .` at the export's top, on the host, between two client walks."""
    top = env.server.export
    d = top / f"{env.host.name}-d"
    d.mkdir()
    (d / "inner").mkdir()
    with env.top.walk([d.name]) as fd, env.top.walk([d.name, "inner"]) as finner:
        os.symlink("..", d / "l")  # d/l -> .. is the export itself: harmless where it is
        with env.top.walk([d.name, "l"]) as fl:
            assert fl.qid.type == c.QTSYMLINK
            moved = f"{env.host.name}-l"
            os.rename(d / "l", top / moved)  # now top/<moved> -> .. points above the export
            with pytest.raises(P9Error):
                fd.walk("l")
            with pytest.raises(P9Error):
                fl.walk("outside")
            try:  # a path-based server may have lost the moved link; it must never misread it
                assert fl.readlink() == ".."
            except P9Error as e:
                assert e.errno == errno.ENOENT
        assert not _outside_reachable(env, [moved, "outside", "SECRET"])
        with env.top.walk([moved]) as ml:
            assert ml.qid.type == c.QTSYMLINK
        # The directory fids still work and '..' from them stays inside.
        with finner.walk(["..", "..", "..", ".."]) as up:
            assert ident(up.qid) == ident(env.top.qid)
        assert ident(fd.getattr().qid) == ident(fd.qid)


@pytest.mark.xen9p_only(reason=NOT_CONFINED)
def test_directory_swapped_for_a_symlink_between_walks(env):
    (env.host / "d").mkdir()
    with env.root.walk("d") as fd:
        os.rename(env.host / "d", env.host / "d-real")
        os.symlink(str(env.server.outside), env.host / "d")
        # fd names the directory object, not the path: walking on it must not reach outside.
        try:
            with fd.walk("SECRET") as s:
                s.open()
                assert b"outside" not in s.read()
        except P9Error:
            pass
        assert not _outside_reachable(env, [env.host.name, "d", "SECRET"])


def test_special_files_can_be_walked_and_stat(env):
    os.mkfifo(env.host / "fifo")
    with env.root.walk("fifo") as f:
        assert f.getattr().mode & 0o170000 == 0o010000


@pytest.mark.xen9p_only(reason="diod opens host fifos (it would block); xen9p never opens special files")
def test_special_files_are_never_opened(env):
    os.mkfifo(env.host / "fifo")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(env.host / "sock"))
        for name in ("fifo", "sock"):
            with env.root.walk(name) as f:
                for flags in (c.L_O_RDONLY, c.L_O_WRONLY, c.L_O_RDWR | c.L_O_NONBLOCK):
                    with raises_errno(errno.ENXIO):
                        f.open(flags)
    finally:
        s.close()


@pytest.mark.xen9p_only(reason="diod builds host paths from names: 'a\\0b' creates 'a', 'a/b' is a host path")
def test_bad_names_are_refused(env):
    for bad in ("a/b", "", "a\0b", ".", ".."):
        with pytest.raises(P9Error):
            env.root.create(bad, c.L_O_RDWR | c.L_O_CREAT, 0o644)
        with pytest.raises(P9Error):
            env.root.mkdir(bad)
    with pytest.raises(P9Error):
        env.root.walk(["a/b"])
    assert sorted(os.listdir(env.host)) == []
