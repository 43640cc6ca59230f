"""Acceptance: the four security models of xen9p, checked from the host side.

mapped-xattr / mapped-file metadata must be byte-for-byte QEMU's on-disk format (9p-local.c).
"""
from __future__ import annotations

import errno
import os
import stat
import struct

import pytest

from xen9p_sim.client import P9Error
from xen9p_common.p9 import constants as c

from .helpers import RDWR_CREATE, raises_errno

pytestmark = pytest.mark.xen9p_only(reason="security models are a xen9p (QEMU-compatible) feature")

GUEST_UID = 4321
GID = 1234


@pytest.fixture
def guest(env):
    """A second connection attached as uid GUEST_UID, on the test's directory."""
    cl = env.server.connect()
    top = cl.attach(str(env.server.export), "guest", GUEST_UID)
    root = top.walk([env.host.name])
    yield root
    cl.close()


def need_root():
    if os.geteuid() != 0:
        pytest.skip("host ownership checks need root")


# --- passthrough and none: the host sees the guest's ownership and mode -------

@pytest.mark.models("passthrough", "none")
def test_passthrough_create_sets_owner_and_exact_mode(env, guest):
    need_root()
    with guest.create("f", RDWR_CREATE, 0o666, GID):  # 0o666: no umask may apply
        pass
    guest.mkdir("d", 0o777, GID + 1)
    guest.symlink("l", "f", GID + 2)
    st = os.lstat(env.host / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o666, GUEST_UID, GID)
    st = os.lstat(env.host / "d")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o777
    assert (st.st_uid, st.st_gid) == (GUEST_UID, GID + 1)
    st = os.lstat(env.host / "l")
    assert stat.S_ISLNK(st.st_mode) and (st.st_uid, st.st_gid) == (GUEST_UID, GID + 2)


@pytest.mark.models("passthrough", "none")
def test_passthrough_setattr_chowns_and_chmods_on_the_host(env):
    need_root()
    (env.host / "f").write_bytes(b"")
    with env.root.walk("f") as f:
        f.setattr(uid=777, gid=778)
        f.setattr(mode=0o4751)
        a = f.getattr()
    st = os.stat(env.host / "f")
    assert (st.st_uid, st.st_gid) == (777, 778) == (a.uid, a.gid)
    assert stat.S_IMODE(st.st_mode) == 0o4751 == a.mode & 0o7777


@pytest.mark.models("passthrough", "none")
def test_passthrough_mknod_makes_real_special_files(env):
    need_root()
    env.root.mknod("p", stat.S_IFIFO | 0o640)
    env.root.mknod("c", stat.S_IFCHR | 0o600, 1, 3)
    assert stat.S_ISFIFO(os.lstat(env.host / "p").st_mode)
    st = os.lstat(env.host / "c")
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)


# --- mapped-xattr -------------------------------------------------------------

def _vx(path, name):
    return os.getxattr(path, "user.virtfs." + name, follow_symlinks=False)


def _le32(v):
    return struct.pack("<I", v)


@pytest.mark.models("mapped-xattr")
def test_mapped_xattr_create_metadata_on_disk(env, guest):
    with guest.create("f", RDWR_CREATE, 0o640, GID) as f:
        a = f.getattr()
    p = env.host / "f"
    st = os.lstat(p)
    assert st.st_mode == stat.S_IFREG | 0o600
    assert (_vx(p, "uid"), _vx(p, "gid"), _vx(p, "mode")) == (
        _le32(GUEST_UID), _le32(GID), _le32(stat.S_IFREG | 0o640))
    with pytest.raises(OSError):
        _vx(p, "rdev")  # QEMU writes rdev only for mknod
    assert (a.mode, a.uid, a.gid) == (stat.S_IFREG | 0o640, GUEST_UID, GID)


@pytest.mark.models("mapped-xattr")
def test_mapped_xattr_mkdir_symlink_mknod_on_disk(env, guest):
    guest.mkdir("d", 0o750, GID)
    p = env.host / "d"
    assert os.lstat(p).st_mode == stat.S_IFDIR | 0o700
    assert _vx(p, "mode") == _le32(stat.S_IFDIR | 0o750)

    guest.symlink("l", "../some/target", GID)
    p = env.host / "l"
    assert os.lstat(p).st_mode == stat.S_IFREG | 0o600  # a symlink is a regular file holding the target
    assert p.read_bytes() == b"../some/target"
    assert _vx(p, "mode") == _le32(stat.S_IFLNK | 0o777)
    with guest.walk("l") as ln:
        assert ln.qid.type == c.QTSYMLINK and ln.readlink() == "../some/target"

    guest.mknod("c", stat.S_IFCHR | 0o620, 1, 3, GID)
    p = env.host / "c"
    assert os.lstat(p).st_mode == stat.S_IFREG | 0o600
    assert _vx(p, "mode") == _le32(stat.S_IFCHR | 0o620)
    assert _vx(p, "rdev") == struct.pack("<Q", os.makedev(1, 3))
    with guest.walk("c") as dev:
        a = dev.getattr()
        assert a.mode == stat.S_IFCHR | 0o620 and a.rdev == os.makedev(1, 3)


@pytest.mark.models("mapped-xattr")
def test_mapped_xattr_setattr_changes_only_metadata(env):
    (env.host / "f").write_bytes(b"")
    os.chmod(env.host / "f", 0o644)
    with env.root.walk("f") as f:
        assert f.getattr().mode == stat.S_IFREG | 0o644  # no xattrs yet: the host's own mode
        f.setattr(mode=0o600, uid=55, gid=66)
        a = f.getattr()
    p = env.host / "f"
    assert (a.mode, a.uid, a.gid) == (stat.S_IFREG | 0o600, 55, 66)
    assert (_vx(p, "mode"), _vx(p, "uid"), _vx(p, "gid")) == (_le32(stat.S_IFREG | 0o600), _le32(55), _le32(66))
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == os.geteuid()


@pytest.mark.models("mapped-xattr")
def test_mapped_xattr_metadata_is_hidden_and_refused(env, guest):
    with guest.create("f", RDWR_CREATE, 0o640, GID) as f:
        f.xattr_set("user.visible", b"1")
        names = f.xattr_list()
        assert "user.visible" in names
        assert not [n for n in names if n.startswith("user.virtfs.")]
        with raises_errno(errno.ENODATA, errno.EACCES, errno.EPERM):
            f.xattr_get("user.virtfs.uid")
        with raises_errno(errno.EACCES, errno.EPERM, errno.EOPNOTSUPP):
            f.xattr_set("user.virtfs.mode", _le32(stat.S_IFREG | 0o4777))
        with pytest.raises(P9Error):
            f.xattr_remove("user.virtfs.uid")
    p = env.host / "f"
    assert _vx(p, "mode") == _le32(stat.S_IFREG | 0o640)
    assert _vx(p, "uid") == _le32(GUEST_UID)


# --- mapped-file --------------------------------------------------------------

def _meta(dirpath, name):
    return (dirpath / ".virtfs_metadata" / name).read_bytes()


@pytest.mark.models("mapped-file")
def test_mapped_file_create_metadata_on_disk(env, guest):
    with guest.create("f", RDWR_CREATE, 0o640, GID) as f:
        a = f.getattr()
    assert os.lstat(env.host / "f").st_mode == stat.S_IFREG | 0o600
    assert _meta(env.host, "f") == b"virtfs.uid=%d\nvirtfs.gid=%d\nvirtfs.mode=%d\n" % (
        GUEST_UID, GID, stat.S_IFREG | 0o640)
    md = os.lstat(env.host / ".virtfs_metadata")
    assert md.st_mode == stat.S_IFDIR | 0o700
    assert (a.mode, a.uid, a.gid) == (stat.S_IFREG | 0o640, GUEST_UID, GID)


@pytest.mark.models("mapped-file")
def test_mapped_file_mkdir_symlink_mknod_on_disk(env, guest):
    guest.mkdir("d", 0o750, GID)
    assert os.lstat(env.host / "d").st_mode == stat.S_IFDIR | 0o700
    assert _meta(env.host, "d") == b"virtfs.uid=%d\nvirtfs.gid=%d\nvirtfs.mode=%d\n" % (
        GUEST_UID, GID, stat.S_IFDIR | 0o750)
    guest.symlink("l", "tgt", GID)
    assert os.lstat(env.host / "l").st_mode == stat.S_IFREG | 0o600
    assert (env.host / "l").read_bytes() == b"tgt"
    assert _meta(env.host, "l") == b"virtfs.uid=%d\nvirtfs.gid=%d\nvirtfs.mode=%d\n" % (
        GUEST_UID, GID, stat.S_IFLNK | 0o777)
    guest.mknod("p", stat.S_IFIFO | 0o644, 0, 0, GID)
    assert _meta(env.host, "p") == b"virtfs.uid=%d\nvirtfs.gid=%d\nvirtfs.mode=%d\nvirtfs.rdev=0\n" % (
        GUEST_UID, GID, stat.S_IFIFO | 0o644)
    with guest.walk("p") as p:
        assert stat.S_ISFIFO(p.getattr().mode)
    with guest.walk("l") as ln:
        assert ln.readlink() == "tgt"


@pytest.mark.models("mapped-file")
def test_mapped_file_setattr_rewrites_the_metadata(env, guest):
    with guest.create("f", RDWR_CREATE, 0o640, GID):
        pass
    with guest.walk("f") as f:
        f.setattr(mode=0o600)
        assert f.getattr().mode == stat.S_IFREG | 0o600
    assert _meta(env.host, "f") == b"virtfs.uid=%d\nvirtfs.gid=%d\nvirtfs.mode=%d\n" % (
        GUEST_UID, GID, stat.S_IFREG | 0o600)


@pytest.mark.models("mapped-file")
def test_mapped_file_root_metadata(env):
    env.top.setattr(mode=0o755)
    assert (env.server.export / ".virtfs_metadata_root").read_bytes() == b"virtfs.mode=%d\n" % (
        stat.S_IFDIR | 0o755)
    assert env.top.getattr().mode == stat.S_IFDIR | 0o755
    assert ".virtfs_metadata_root" not in env.top.listdir()
    with pytest.raises(P9Error):
        env.top.walk(".virtfs_metadata_root")


@pytest.mark.models("mapped-file")
def test_mapped_file_metadata_is_hidden_and_refused(env, guest):
    with guest.create("f", RDWR_CREATE, 0o640, GID):
        pass
    assert (env.host / ".virtfs_metadata").is_dir()
    assert guest.listdir() == ["f"]
    for name in (".virtfs_metadata", ".virtfs_metadata_root"):
        with pytest.raises(P9Error):
            guest.walk(name)
        with pytest.raises(P9Error):
            guest.create(name, RDWR_CREATE, 0o644)
        with pytest.raises(P9Error):
            guest.mkdir(name)
        with pytest.raises(P9Error):
            guest.symlink(name, "x")
        with pytest.raises(P9Error):
            guest.rename("f", guest, name)
        with pytest.raises(P9Error):
            guest.unlink(name, c.AT_REMOVEDIR)
        with pytest.raises(P9Error):
            guest.walk([name, "f"])
    with guest.walk("f") as f:
        with pytest.raises(P9Error):
            guest.link(f, ".virtfs_metadata")
    assert (env.host / ".virtfs_metadata" / "f").exists()
    assert (env.host / "f").exists()


@pytest.mark.models("mapped-file")
def test_mapped_file_rename_and_unlink_carry_the_metadata(env, guest):
    with guest.create("f", RDWR_CREATE, 0o640, GID):
        pass
    guest.rename("f", guest, "g")
    assert not (env.host / ".virtfs_metadata" / "f").exists()
    assert _meta(env.host, "g").startswith(b"virtfs.uid=%d\n" % GUEST_UID)
    guest.unlink("g")
    assert not (env.host / ".virtfs_metadata" / "g").exists()
