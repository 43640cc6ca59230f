"""The four QEMU security models: how guest ownership, modes and special files live on the host.

passthrough/none use real host ownership; mapped-xattr keeps them in
user.virtfs.* xattrs; mapped-file in .virtfs_metadata/<name> text files. The
on-disk formats are QEMU's, so an export written by QEMU reads the same here.
"""
from __future__ import annotations

import errno
import os
import stat
import struct

from . import hostops as H

MAPPED_FILE_MODE = 0o600  # host mode of files created in the mapped models (QEMU's)
MAPPED_DIR_MODE = 0o700
META_DIR = b".virtfs_metadata"
META_ROOT = b".virtfs_metadata_root"
VIRTFS_PREFIX = b"user.virtfs."
_ACL_PREFIX = b"system.posix_acl_"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class Where:
    """Where an object lives: a borrowed fd of its parent dir and its name (None: the root)."""

    __slots__ = ("dirfd", "name")

    def __init__(self, dirfd: int, name: bytes | None) -> None:
        self.dirfd = dirfd
        self.name = name


class Passthrough:
    """Guest ownership and modes are the host's; the server needs the privileges for them."""

    name = "passthrough"
    mapped = False
    needs_where = False  # only mapped-file keeps metadata beside the object, by name
    ignore_chown_errors = False

    def attr(self, st, pfd: int, where) -> tuple[int, int, int, int]:
        return st.st_mode, st.st_uid, st.st_gid, st.st_rdev

    def check_name(self, name: bytes) -> None:
        pass

    def hidden(self, name: bytes) -> bool:
        return False

    # -- creation -----------------------------------------------------------

    def _own(self, pfd: int, uid: int, gid: int) -> None:
        try:
            H.chown(pfd, uid, gid)
        except OSError:
            if not self.ignore_chown_errors:
                raise

    def _finish(self, dirfd: int, name: bytes, uid: int, gid: int, mode: int | None, rmdir: bool) -> None:
        pfd = os.open(name, H.O_PATH_NOFOLLOW, dir_fd=dirfd)
        try:
            self._own(pfd, uid, gid)
            if mode is not None:
                H.chmod(pfd, mode)  # after chown (which clears setuid) and against the umask
        except OSError:
            _remove_quietly(dirfd, name, rmdir)
            raise
        finally:
            os.close(pfd)

    def create(self, dirfd, name, flags, mode, uid, gid) -> int:
        fd = os.open(name, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o7777, dir_fd=dirfd)
        try:
            self._finish(dirfd, name, uid, gid, mode, False)
        except OSError:
            os.close(fd)
            raise
        return fd

    def mkdir(self, dirfd, name, mode, uid, gid) -> None:
        os.mkdir(name, mode & 0o7777, dir_fd=dirfd)
        self._finish(dirfd, name, uid, gid, mode, True)

    def mknod(self, dirfd, name, mode, rdev, uid, gid) -> None:
        os.mknod(name, mode, rdev, dir_fd=dirfd)
        self._finish(dirfd, name, uid, gid, mode, False)

    def symlink(self, dirfd, name, target: bytes, uid, gid) -> None:
        os.symlink(target, name, dir_fd=dirfd)
        try:
            os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
        except OSError:
            if not self.ignore_chown_errors:
                _remove_quietly(dirfd, name, False)
                raise

    def readlink(self, pfd: int, st, mode: int) -> bytes:
        if not stat.S_ISLNK(st.st_mode):
            raise OSError(errno.EINVAL, "not a symlink")
        return os.fsencode(os.readlink("", dir_fd=pfd))

    # -- metadata changes ---------------------------------------------------

    def set_mode(self, pfd, where, st, mode: int) -> None:
        H.chmod(pfd, mode)

    def set_owner(self, pfd, where, st, uid: int, gid: int) -> None:
        self._own(pfd, uid, gid)

    def unlinked(self, dirfd, name, isdir) -> None:
        pass

    def before_rmdir(self, dirfd, name) -> None:
        pass

    def renamed(self, odirfd, oname, ndirfd, nname) -> None:
        pass

    # -- xattrs -------------------------------------------------------------

    def xattr_name(self, name: bytes, write: bool) -> bytes:
        return name

    def xattr_visible(self, name: bytes) -> bool:
        return True

    def xattr_guest_name(self, name: bytes) -> bytes:
        return name


class NoneModel(Passthrough):
    """Like passthrough, but failing to give a new object the guest's owner is not an error."""

    name = "none"
    ignore_chown_errors = True


class _Mapped(Passthrough):
    """Shared by both mapped models: host objects are plain files/dirs owned by the server."""

    mapped = True

    def load(self, pfd: int, where) -> dict:
        raise NotImplementedError

    def store(self, pfd: int, where, values: dict) -> None:
        raise NotImplementedError

    def attr(self, st, pfd, where):
        m = self.load(pfd, where)
        return (m.get("mode", st.st_mode), m.get("uid", st.st_uid), m.get("gid", st.st_gid),
                m.get("rdev", st.st_rdev))

    def _create_meta(self, dirfd, name, values, rmdir):
        values = {k: v for k, v in values.items() if v != -1}  # -1: not given (a .u Tcreate's gid)
        pfd = os.open(name, H.O_PATH_NOFOLLOW, dir_fd=dirfd)
        try:
            self.store(pfd, Where(dirfd, name), values)
        except OSError:
            _remove_quietly(dirfd, name, rmdir)
            raise
        finally:
            os.close(pfd)

    def create(self, dirfd, name, flags, mode, uid, gid):
        fd = os.open(name, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, MAPPED_FILE_MODE, dir_fd=dirfd)
        try:
            self._create_meta(dirfd, name, {"uid": uid, "gid": gid, "mode": stat.S_IFREG | (mode & 0o7777)}, False)
        except OSError:
            os.close(fd)
            raise
        return fd

    def mkdir(self, dirfd, name, mode, uid, gid):
        os.mkdir(name, MAPPED_DIR_MODE, dir_fd=dirfd)
        self._create_meta(dirfd, name, {"uid": uid, "gid": gid, "mode": stat.S_IFDIR | (mode & 0o7777)}, True)

    def mknod(self, dirfd, name, mode, rdev, uid, gid):
        # Special files exist only as metadata: the host object is a plain file.
        os.mknod(name, stat.S_IFREG | MAPPED_FILE_MODE, 0, dir_fd=dirfd)
        self._create_meta(dirfd, name, {"uid": uid, "gid": gid, "mode": mode, "rdev": rdev}, False)

    def symlink(self, dirfd, name, target, uid, gid):
        fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     MAPPED_FILE_MODE, dir_fd=dirfd)
        try:
            os.write(fd, target)
        except OSError:
            _remove_quietly(dirfd, name, False)
            raise
        finally:
            os.close(fd)
        self._create_meta(dirfd, name, {"uid": uid, "gid": gid, "mode": stat.S_IFLNK | 0o777}, False)

    def readlink(self, pfd, st, mode: int):
        if stat.S_ISLNK(st.st_mode):  # a real host symlink someone else made
            return os.fsencode(os.readlink("", dir_fd=pfd))
        if not (stat.S_ISREG(st.st_mode) and stat.S_ISLNK(mode)):
            raise OSError(errno.EINVAL, "not a symlink")
        fd = H.reopen(pfd, os.O_RDONLY, st)
        try:
            return os.read(fd, 4096)
        finally:
            os.close(fd)

    def set_mode(self, pfd, where, st, mode):
        cur = self.load(pfd, where).get("mode", st.st_mode)
        self.store(pfd, where, {"mode": stat.S_IFMT(cur) | (mode & 0o7777)})

    def set_owner(self, pfd, where, st, uid, gid):
        vals = {}
        if uid != -1:
            vals["uid"] = uid
        if gid != -1:
            vals["gid"] = gid
        self.store(pfd, where, vals)


class MappedXattr(_Mapped):
    """user.virtfs.{uid,gid,mode} (LE u32) and user.virtfs.rdev (LE u64) on the host object."""

    name = "mapped-xattr"
    _FIELDS = (("uid", b"user.virtfs.uid", _U32), ("gid", b"user.virtfs.gid", _U32),
               ("mode", b"user.virtfs.mode", _U32), ("rdev", b"user.virtfs.rdev", _U64))

    def load(self, pfd, where):
        out = {}
        for key, xname, S in self._FIELDS:
            try:
                raw = H.getxattr(pfd, xname)
            except OSError:
                continue
            if len(raw) >= S.size:
                out[key] = S.unpack_from(raw)[0]
        return out

    def store(self, pfd, where, values):
        for key, xname, S in self._FIELDS:
            if key in values:
                H.setxattr(pfd, xname, S.pack(values[key] & ((1 << (8 * S.size)) - 1)))

    def xattr_name(self, name, write):
        if name.startswith(VIRTFS_PREFIX):
            # QEMU: reads see "no such attribute", writes are refused.
            raise OSError(errno.EACCES if write else errno.ENODATA, "reserved xattr")
        if name.startswith(_ACL_PREFIX):
            return VIRTFS_PREFIX + name  # guest ACLs live beside the metadata, as QEMU keeps them
        return name

    def xattr_visible(self, name):
        return not name.startswith(VIRTFS_PREFIX) or name.startswith(VIRTFS_PREFIX + _ACL_PREFIX)

    def xattr_guest_name(self, name: bytes) -> bytes:
        if name.startswith(VIRTFS_PREFIX + _ACL_PREFIX):
            return name[len(VIRTFS_PREFIX):]
        return name


def _remove_quietly(dirfd: int, name: bytes, isdir: bool) -> None:
    try:
        if isdir:
            os.rmdir(name, dir_fd=dirfd)
        else:
            os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass
