"""Acceptance: file and directory operations of 9P2000.L (run against xen9p and diod).

Every test gets its own directory in a shared server's export (`env.root`, `env.host`).
"""
from __future__ import annotations

import errno
import os
import stat

import pytest

from xen9p_sim.client import P9Error
from xen9p_common.p9 import constants as c
from xen9p_common.p9 import messages as m
from xen9p_common.p9.dirent import unpack_dirents

from .helpers import ident, DIR_OPEN, RDWR_CREATE, raises_errno


def test_create_write_read_round_trip(env):
    data = os.urandom(300_000)  # several msize-sized Twrites and Treads
    with env.root.create("f", RDWR_CREATE, 0o644) as f:
        assert f.qid.type == c.QTFILE
        assert f.write(data) == len(data)
        assert f.read() == data
        assert f.read(100, 10) == data[100:110]
    assert (env.host / "f").read_bytes() == data


def test_host_written_data_is_read_back(env):
    (env.host / "h").write_bytes(b"from the host\n")
    with env.root.open_path("h") as f:
        assert f.read() == b"from the host\n"
        assert f.read(1000) == b""  # past EOF: empty Rread


@pytest.mark.diod_differs("Tread with count > msize - 11 gets Rlerror(EIO) instead of a clamped Rread")
def test_rread_never_exceeds_count_or_msize(env):
    (env.host / "big").write_bytes(b"z" * 200_000)
    with env.root.open_path("big") as f:
        assert f.read_once(0, 10) == b"z" * 10
        data = f.read_once(0, 1 << 20)  # ask for more than msize allows
        assert 0 < len(data) <= env.client.msize - 11


def test_lcreate_existing_name_with_excl(env):
    (env.host / "e").write_bytes(b"")
    with raises_errno(errno.EEXIST):
        env.root.create("e", RDWR_CREATE | c.L_O_EXCL, 0o644)


def test_open_trunc_and_append(env):
    (env.host / "t").write_bytes(b"0123456789")
    with env.root.open_path("t", c.L_O_WRONLY | c.L_O_TRUNC):
        pass
    assert (env.host / "t").read_bytes() == b""
    (env.host / "a").write_bytes(b"abc")
    with env.root.open_path("a", c.L_O_WRONLY | c.L_O_APPEND) as f:
        f.write(b"def", 0)  # O_APPEND: the offset is ignored
    assert (env.host / "a").read_bytes() == b"abcdef"


def test_open_directory_for_writing_is_refused(env):
    (env.host / "d").mkdir()
    with env.root.walk("d") as d:
        with raises_errno(errno.EISDIR):
            d.open(c.L_O_RDWR)


def test_qid_types(env):
    (env.host / "d").mkdir()
    (env.host / "f").write_bytes(b"")
    os.symlink("f", env.host / "l")
    with env.root.walk("d") as d, env.root.walk("f") as f, env.root.walk("l") as ln:
        assert d.qid.type == c.QTDIR
        assert f.qid.type == c.QTFILE
        assert ln.qid.type == c.QTSYMLINK
        assert len({d.qid.path, f.qid.path, ln.qid.path, env.root.qid.path}) == 4


def test_getattr_matches_host(env):
    (env.host / "f").write_bytes(b"x" * 5000)
    st = os.stat(env.host / "f")
    with env.root.walk("f") as f:
        a = f.getattr(c.GETATTR_ALL)
    assert a.valid & c.GETATTR_BASIC == c.GETATTR_BASIC
    assert stat.S_ISREG(a.mode)
    assert a.size == 5000 and a.nlink == 1
    assert a.mtime_sec == int(st.st_mtime)
    assert ident(a.qid) == ident(f.qid)
    d = env.root.getattr()
    assert stat.S_ISDIR(d.mode) and d.qid.type == c.QTDIR


def test_setattr_size_mode_times(env):
    (env.host / "f").write_bytes(b"x" * 1000)
    with env.root.walk("f") as f:
        f.setattr(size=10)
        f.setattr(mode=0o600)
        f.setattr(mtime=(1_000_000_000, 5), atime=(1_000_000_001, 7))
        a = f.getattr()
        assert a.size == 10
        assert a.mode & 0o7777 == 0o600
        assert (a.mtime_sec, a.mtime_nsec) == (1_000_000_000, 5)
        assert (a.atime_sec, a.atime_nsec) == (1_000_000_001, 7)
        f.setattr(mtime=True, atime=True)  # "now"
        assert f.getattr().mtime_sec > 1_000_000_000
    assert os.stat(env.host / "f").st_size == 10


def test_mkdir_and_rmdir(env):
    q = env.root.mkdir("d", 0o755)
    assert q.type == c.QTDIR
    assert (env.host / "d").is_dir()
    with raises_errno(errno.EEXIST):
        env.root.mkdir("d", 0o755)
    (env.host / "d" / "inner").write_bytes(b"")
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST):
        env.root.rmdir("d")
    (env.host / "d" / "inner").unlink()
    env.root.rmdir("d")
    assert not (env.host / "d").exists()


def test_symlink_and_readlink(env):
    q = env.root.symlink("l", "some/where/else")
    assert q.type == c.QTSYMLINK
    with env.root.walk("l") as ln:
        assert ln.readlink() == "some/where/else"
        assert ln.qid.type == c.QTSYMLINK
    with raises_errno(errno.EEXIST):
        env.root.symlink("l", "x")


def test_readlink_of_regular_file_fails(env):
    (env.host / "f").write_bytes(b"")
    with env.root.walk("f") as f:
        with raises_errno(errno.EINVAL):
            f.readlink()


def test_hard_link(env):
    with env.root.create("f", RDWR_CREATE, 0o644) as f:
        f.write(b"shared")
    with env.root.walk("f") as f:
        env.root.link(f, "g")
        assert f.getattr().nlink == 2
    with env.root.open_path("g") as g:
        assert g.read() == b"shared"


def test_mknod_fifo(env):
    q = env.root.mknod("p", stat.S_IFIFO | 0o644)
    assert q.type == c.QTFILE
    with env.root.walk("p") as p:
        assert stat.S_ISFIFO(p.getattr().mode)


def test_renameat_and_replace(env):
    (env.host / "a").write_bytes(b"A")
    (env.host / "b").write_bytes(b"B")
    (env.host / "sub").mkdir()
    with env.root.walk("sub") as sub:
        env.root.rename("a", sub, "a2")
        assert (env.host / "sub" / "a2").read_bytes() == b"A"
        env.root.rename("b", sub, "a2")  # replaces the target
        assert (env.host / "sub" / "a2").read_bytes() == b"B"
    assert not (env.host / "a").exists() and not (env.host / "b").exists()


def test_trename_moves_the_fid_with_the_file(env):
    (env.host / "old").write_bytes(b"data")
    (env.host / "dst").mkdir()
    with env.root.walk("old") as f, env.root.walk("dst") as dst:
        f.rename_fid(dst, "new")
        assert (env.host / "dst" / "new").read_bytes() == b"data"
        f.open(c.L_O_RDONLY)  # the fid follows the file to its new name
        assert f.read() == b"data"
        assert f.getattr().size == 4


@pytest.mark.diod_differs("fids are host paths: a fid below a renamed directory keeps the old path (ENOENT)")
def test_fid_below_a_renamed_directory_follows(env):
    (env.host / "d1").mkdir()
    (env.host / "d1" / "f").write_bytes(b"in d1")
    with env.root.walk("d1/f") as f:
        env.root.rename("d1", env.root, "d2")
        with f.walk() as again:
            again.open()
            assert again.read() == b"in d1"
        assert f.getattr().size == 5


def test_unlink_file_and_directory(env):
    (env.host / "f").write_bytes(b"")
    (env.host / "d").mkdir()
    env.root.unlink("f")
    env.root.rmdir("d")
    assert not (env.host / "f").exists() and not (env.host / "d").exists()
    with raises_errno(errno.ENOENT):
        env.root.unlink("f")


def test_tremove(env):
    (env.host / "f").write_bytes(b"")
    env.root.walk("f").remove()
    assert not (env.host / "f").exists()


def test_tremove_clunks_even_on_failure(env):
    (env.host / "d").mkdir()
    (env.host / "d" / "x").write_bytes(b"")
    fid = env.root.walk("d")
    number = fid.fid
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST):
        fid.remove()
    # The fid is gone: using it fails, and its number can be used again for a new walk.
    with pytest.raises(P9Error):
        env.client.rpc(m.Tgetattr, number, c.GETATTR_BASIC)
    env.client.rpc(m.Twalk, env.root.fid, number, ("d",))
    env.client.rpc(m.Tclunk, number)
    assert (env.host / "d" / "x").exists()


def test_open_unlink_read_write(env):
    with env.root.create("f", RDWR_CREATE, 0o644) as f:
        f.write(b"before unlink")
        env.root.unlink("f")
        assert not (env.host / "f").exists()
        assert f.read() == b"before unlink"
        f.write(b"!", 13)
        assert f.read() == b"before unlink!"


@pytest.mark.diod_differs("Tgetattr on an open fid uses the path, so an unlinked open file gives ENOENT")
def test_open_unlink_getattr(env):
    with env.root.create("f", RDWR_CREATE, 0o644) as f:
        f.write(b"0123456789")
        env.root.unlink("f")
        a = f.getattr()
        assert a.size == 10 and a.nlink == 0


@pytest.mark.diod_differs("Tsetattr(size) on an open fid uses the path, so an unlinked open file gives ENOENT")
def test_open_unlink_truncate(env):
    with env.root.create("f", RDWR_CREATE, 0o644) as f:
        f.write(b"x" * 100)
        env.root.unlink("f")
        f.setattr(size=3)
        assert f.read() == b"xxx"


def test_statfs(env):
    s = env.root.statfs()
    assert s.bsize > 0 and s.blocks > 0 and s.namelen >= 255
    assert s.bfree <= s.blocks and s.bavail <= s.blocks


def test_fsync(env):
    with env.root.create("f", RDWR_CREATE, 0o644) as f:
        f.write(b"durable")
        f.fsync()
        f.fsync(datasync=True)


def test_walk_errors(env):
    (env.host / "f").write_bytes(b"")
    with raises_errno(errno.ENOENT):
        env.root.walk("missing")
    with raises_errno(errno.ENOTDIR, errno.ENOENT):
        env.root.walk("f/below")


def test_create_on_a_file_fid_fails(env):
    (env.host / "f").write_bytes(b"")
    with env.root.walk("f") as f:
        with pytest.raises(P9Error):
            f.create("x", RDWR_CREATE, 0o644)
        with pytest.raises(P9Error):
            f.mkdir("x")


def test_readdir_small(env):
    for n in ("a", "b", "c"):
        (env.host / n).write_bytes(b"")
    (env.host / "d").mkdir()
    with env.root.walk() as d:
        d.open(DIR_OPEN)
        ents = list(d.readdir())
    names = [e.name for e in ents if e.name not in (".", "..")]
    assert sorted(names) == ["a", "b", "c", "d"]
    by = {e.name: e for e in ents}
    assert by["d"].qid.type == c.QTDIR
    assert by["a"].qid.type == c.QTFILE


def test_readdir_10000_entries_in_many_calls(env):
    big = env.host / "big"
    big.mkdir()
    want = {f"entry-{i:05d}-{'x' * (i % 37)}" for i in range(10_000)}
    for n in want:
        os.close(os.open(big / n, os.O_CREAT | os.O_WRONLY, 0o644))
    count = 4096
    seen: list[str] = []
    calls = 0
    with env.root.walk("big") as d:
        d.open(DIR_OPEN)
        offset = 0
        while True:
            data = env.client.rpc(m.Treaddir, d.fid, offset, count).data
            assert len(data) <= count
            calls += 1
            ents = list(unpack_dirents(data))
            if not ents:
                break
            seen += [e.name for e in ents]
            offset = ents[-1].offset
    names = [n for n in seen if n not in (".", "..")]
    assert len(names) == len(set(names)), "an entry was returned twice"
    assert set(names) == want, f"lost {len(want - set(names))} entries"
    assert calls > 50


def test_readdir_resumes_from_any_returned_offset(env):
    for i in range(50):
        (env.host / f"n{i}").write_bytes(b"")
    with env.root.walk() as d:
        d.open(DIR_OPEN)
        full = list(d.readdir())
        mid = full[len(full) // 2]
        rest = list(d.readdir_raw(mid.offset, 65000))
        assert [e.name for e in rest] == [e.name for e in full[len(full) // 2 + 1:]][: len(rest)]
        assert rest


def test_readdir_count_too_small_for_one_entry(env):
    (env.host / "a-rather-long-name").write_bytes(b"")
    with env.root.walk() as d:
        d.open(DIR_OPEN)
        data = env.client.rpc(m.Treaddir, d.fid, 0, 10).data
        assert len(data) == 0 or len(data) <= 10


@pytest.mark.diod_differs("Tunlinkat answers EOPNOTSUPP (the Linux client then falls back to Tremove)")
def test_unlinkat_direct(env):
    (env.host / "f").write_bytes(b"")
    (env.host / "d").mkdir()
    env.root.unlinkat("f")
    with raises_errno(errno.EISDIR, errno.EPERM):
        env.root.unlinkat("d")  # a directory needs AT_REMOVEDIR
    env.root.unlinkat("d", c.AT_REMOVEDIR)
    assert sorted(os.listdir(env.host)) == []


@pytest.mark.diod_differs("Trenameat answers EOPNOTSUPP (the Linux client then falls back to Trename)")
def test_renameat_direct(env):
    (env.host / "f").write_bytes(b"x")
    (env.host / "d").mkdir()
    with env.root.walk("d") as d:
        env.root.renameat("f", d, "g")
    assert (env.host / "d" / "g").read_bytes() == b"x"
    with raises_errno(errno.ENOENT):
        env.root.renameat("f", env.root, "h")


@pytest.mark.diod_differs("qid.path is the host inode number alone, so it collides across mounts")
def test_qid_path_unique_across_host_mounts(env):
    """Two fresh tmpfs mounts inside the export have the same inode numbers; their qids must differ."""
    import subprocess
    mnts = [env.host / "m1", env.host / "m2"]
    for p in mnts:
        p.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "xen9p-test", str(p)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        for p in mnts:
            (p / "a").write_bytes(b"")
        assert os.stat(mnts[0] / "a").st_ino == os.stat(mnts[1] / "a").st_ino  # the collision is real
        qids = []
        for p in mnts:
            with env.root.walk([p.name]) as d, env.root.walk([p.name, "a"]) as f:
                qids += [d.qid.path, f.qid.path]
        assert len(set(qids)) == 4
    finally:
        for p in mnts:
            subprocess.run(["umount", "-l", str(p)], capture_output=True)


@pytest.mark.xen9p_only(reason="QEMU's iounit and qid.version rules; diod answers iounit 0")
def test_iounit_and_qid_version_follow_qemu(env):
    (env.host / "f").write_bytes(b"y" * 1234)
    with env.root.open_path("f") as f:
        a = f.getattr(c.GETATTR_ALL)
        msize = env.client.msize
        assert f.iounit == (msize - 24) // a.blksize * a.blksize
        assert f.qid.version == (a.mtime_sec ^ (a.size << 8)) & 0xFFFFFFFF


@pytest.mark.xen9p_only(reason="QEMU's block-size rule (st_blksize = iounit); diod reports the host's")
def test_blksize_is_the_iounit_and_statfs_blocks_scale_with_it(env):
    """Linux copies Rgetattr's blksize into stat(): cp and stdio then move whole iounits, not 4 KiB."""
    (env.host / "big").write_bytes(b"z" * 100_000)
    host = os.stat(env.host / "big")
    vfs = os.statvfs(env.host)
    payload = env.client.msize - 24
    with env.root.open_path("big") as f:
        a = f.getattr(c.GETATTR_ALL)
        assert a.blksize == payload // host.st_blksize * host.st_blksize == f.iounit
        assert a.blksize > host.st_blksize  # larger than the host's: the point of the rule
        assert a.blocks == host.st_blocks   # st_blocks stays in 512-byte units
        sf = f.statfs()
    k = payload // vfs.f_bsize
    assert (sf.bsize, sf.blocks) == (vfs.f_bsize * k, vfs.f_blocks // k)
    # Bytes stay (almost) the same: only the block unit changed.
    assert abs(sf.bsize * sf.blocks - vfs.f_bsize * vfs.f_blocks) < sf.bsize
