"""The local-directory backend: every host operation of the server, confined to the export.

Paths are walked one component at a time with openat(O_PATH|O_NOFOLLOW) from the
export's root fd and every call is an *at call on such an fd, so no symlink and
no `..` on the host can lead outside; names are checked only to give QEMU's errnos.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat

from xen9p_common.p9 import Qid
from xen9p_common.p9 import constants as C

from . import hostops as H
from .dirents import DirReader
from .qidmap import QidPathMap
from .models import make_model
from .secmodel import Passthrough, Where

_FLAG_MAP = tuple((lf, hf) for lf, hf in C.PASSTHROUGH_OPEN_FLAGS.items() if hf is not None)


def split(rel: bytes) -> list[bytes]:
    return rel.split(b"/") if rel else []


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def host_open_flags(lflags: int, create: bool = False) -> int:
    """Linux 9P open flags -> host flags; anything that changes host behaviour is dropped."""
    flags = lflags & C.L_O_ACCMODE
    if flags == C.L_O_ACCMODE:
        raise OSError(errno.EINVAL, "bad access mode")
    for lf, hf in _FLAG_MAP:
        if lflags & lf:
            flags |= hf
    if not create:
        flags &= ~(os.O_CREAT | os.O_EXCL)
    return flags | os.O_NOFOLLOW | os.O_CLOEXEC


class LocalBackend:
    """One export directory served under one security model."""

    def __init__(self, export: str, model="passthrough", qid_store=None, readonly: bool = False) -> None:
        self.model = make_model(model) if isinstance(model, str) else model
        self.readonly = readonly
        self.root_fd = os.open(export, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(self.root_fd)
        self.root_dev = st.st_dev
        self.qidmap = QidPathMap(st.st_dev, qid_store)  # None: numbered in this process
        try:
            self.blksize = os.statvfs(H.proc(self.root_fd)).f_bsize or 4096
        except OSError:
            self.blksize = 4096
        if not os.path.exists(H.proc(self.root_fd)):
            raise OSError(errno.ENOSYS, "/proc/self/fd is needed to reopen O_PATH fds")

    def close(self) -> None:
        H.close_quietly(self.root_fd)

    def check_writable(self) -> None:
        """A read-only export (xen9pd's policy) refuses every change: every modifying call below starts
        here, so each request of either 9P dialect that reaches the host gets EROFS, and the security
        models write none of their metadata either."""
        if self.readonly:
            raise OSError(errno.EROFS, "read-only export")

    # -- names and walking --------------------------------------------------

    def check_name(self, name: bytes) -> bytes:
        """A single component a guest may name: not empty, no '/', no NUL (QEMU: ENOENT)."""
        if not name or b"/" in name or b"\0" in name:
            raise OSError(errno.ENOENT, "illegal name")
        self.model.check_name(name)
        return name

    def check_new_name(self, name: bytes) -> bytes:
        self.check_name(name)
        if name == b"." or name == b"..":
            raise OSError(errno.EEXIST, "reserved name")
        return name

    def lookup(self, dirfd: int, name: bytes) -> int:
        """New O_PATH fd of name inside dirfd; never follows a symlink."""
        return os.open(name, H.O_PATH_NOFOLLOW, dir_fd=dirfd)

    def walk(self, rel: bytes) -> int:
        """New O_PATH fd of rel, one component at a time from the root fd."""
        fd = os.dup(self.root_fd)
        try:
            for comp in split(rel):
                nfd = os.open(comp, H.O_PATH_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def parent(self, rel: bytes) -> tuple[int, bytes | None]:
        """(new O_PATH fd of the parent dir, last name) of rel; (dup of root, None) for the root."""
        if not rel:
            return os.dup(self.root_fd), None
        head, _, name = rel.rpartition(b"/")
        return self.walk(head), name

    # -- attributes ---------------------------------------------------------

    def attr(self, fd: int, rel: bytes, st=None):
        """(stat, mode, uid, gid, rdev) with the security model's view applied."""
        if st is None:
            st = os.fstat(fd)
        if not self.model.mapped:
            return st, st.st_mode, st.st_uid, st.st_gid, st.st_rdev
        with self.where(rel) as where:
            mode, uid, gid, rdev = self.model.attr(st, fd, where)
        return st, mode, uid, gid, rdev

    @contextlib.contextmanager
    def where(self, rel: bytes):
        """The Where of rel for models that keep metadata by name, else None."""
        if not self.model.needs_where:
            yield None
            return
        pfd, name = self.parent(rel)
        try:
            yield Where(pfd, name)
        finally:
            os.close(pfd)

    def setattr(self, fd: int, rel: bytes, valid: int, mode: int, uid: int, gid: int, size: int,
                atime: tuple[int, int], mtime: tuple[int, int]) -> None:
        """Tsetattr in QEMU's order: mode, times, owner, size; fd may be O_PATH or open."""
        self.check_writable()
        # Values the host cannot take are refused before anything changes (found by fuzzing: a size
        # above 2^63-1 raised OverflowError in truncate, an EIO and a traceback per request).
        if valid & C.SETATTR_SIZE and size > H.OFF_MAX:
            raise OSError(errno.EINVAL, "size beyond what the host can hold")
        for bit, set_bit, (sec, nsec) in ((C.SETATTR_ATIME, C.SETATTR_ATIME_SET, atime),
                                          (C.SETATTR_MTIME, C.SETATTR_MTIME_SET, mtime)):
            if valid & bit and valid & set_bit and (sec > H.OFF_MAX or nsec >= 1_000_000_000):
                raise OSError(errno.EINVAL, "time out of range")
        st = os.fstat(fd)
        with self.where(rel) as where:
            if valid & C.SETATTR_MODE:
                if stat.S_ISLNK(st.st_mode):
                    raise OSError(errno.EOPNOTSUPP, "chmod of a symlink")
                self.model.set_mode(fd, where, st, mode)
            if valid & (C.SETATTR_ATIME | C.SETATTR_MTIME):
                H.utimens(fd, _time_arg(valid, C.SETATTR_ATIME, C.SETATTR_ATIME_SET, atime),
                          _time_arg(valid, C.SETATTR_MTIME, C.SETATTR_MTIME_SET, mtime))
            if valid & (C.SETATTR_UID | C.SETATTR_GID):
                self.model.set_owner(fd, where, st, uid if valid & C.SETATTR_UID else -1,
                                     gid if valid & C.SETATTR_GID else -1)
        if valid & C.SETATTR_SIZE:
            if stat.S_ISDIR(st.st_mode):
                raise OSError(errno.EISDIR, "truncate of a directory")
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "truncate of a non-regular file")
            os.truncate(H.proc(fd), size)

    def qid(self, st, mode: int | None = None) -> Qid:
        m = st.st_mode if mode is None else mode
        qtype = C.QTDIR if stat.S_ISDIR(m) else C.QTSYMLINK if stat.S_ISLNK(m) else C.QTFILE
        version = (int(st.st_mtime) ^ (st.st_size << 8)) & 0xFFFFFFFF
        return Qid(qtype, version, self.qidmap.path(st.st_dev, st.st_ino))

    def qid_at(self, fd: int, rel: bytes) -> Qid:
        st = os.fstat(fd)
        if self.model.mapped and stat.S_ISREG(st.st_mode):
            _, mode, _, _, _ = self.attr(fd, rel, st)  # a mapped symlink is a host file
            return self.qid(st, mode)
        return self.qid(st)

    # -- open and create ----------------------------------------------------

    def open(self, pfd: int, lflags: int) -> int:
        flags = host_open_flags(lflags)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            self.check_writable()
        return H.reopen(pfd, flags)

    def create(self, dirfd, name, lflags, mode, uid, gid) -> int:
        self.check_writable()
        name = self.check_new_name(name)
        flags = host_open_flags(lflags, True)
        try:
            # O_EXCL always: an O_CREAT open of an existing fifo or device node would open it on the
            # host (a fifo blocks the thread forever; a node made by Tmknod is the host's device).
            return self.model.create(dirfd, name, flags | os.O_EXCL, mode, uid, gid)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
        # It exists: open it as Tlopen does (never a special file, never through a symlink).
        pfd = os.open(name, H.O_PATH_NOFOLLOW, dir_fd=dirfd)
        try:
            return H.reopen(pfd, flags & ~os.O_CREAT)
        finally:
            os.close(pfd)

    def mkdir(self, dirfd, name, mode, uid, gid) -> None:
        self.check_writable()
        self.model.mkdir(dirfd, self.check_new_name(name), mode, uid, gid)

    def mknod(self, dirfd, name, mode, rdev, uid, gid) -> None:
        self.check_writable()
        if stat.S_IFMT(mode) not in (stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise OSError(errno.EINVAL, "bad mknod type")
        if mode & ~(stat.S_IFMT(mode) | 0o7777):  # bits no mode has (os.mknod takes a C int: found by fuzzing)
            raise OSError(errno.EINVAL, "bad mknod mode")
        self.model.mknod(dirfd, self.check_new_name(name), mode, rdev, uid, gid)

    def symlink(self, dirfd, name, target: bytes, uid, gid) -> None:
        self.check_writable()
        if b"\0" in target:
            raise OSError(errno.EINVAL, "NUL in symlink target")
        self.model.symlink(dirfd, self.check_new_name(name), target, uid, gid)

    def readlink(self, pfd: int, rel: bytes) -> bytes:
        st, mode, _, _, _ = self.attr(pfd, rel)
        return self.model.readlink(pfd, st, mode)

    def link(self, target_pfd: int, dirfd: int, name: bytes) -> None:
        self.check_writable()
        st = os.fstat(target_pfd)
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EPERM, "hard link to a directory")
        # linkat through the magic link links the fd's own inode, no AT_EMPTY_PATH privilege needed.
        os.link(H.proc(target_pfd), self.check_new_name(name), dst_dir_fd=dirfd, follow_symlinks=True)

    # -- namespace changes --------------------------------------------------

    def rename(self, odirfd, oname, ndirfd, nname) -> None:
        self.check_writable()
        for n in (oname, nname):
            self.check_name(n)
            if n in (b".", b".."):
                raise OSError(errno.EISDIR, "cannot rename . or ..")
        os.rename(oname, nname, src_dir_fd=odirfd, dst_dir_fd=ndirfd)
        self.model.renamed(odirfd, oname, ndirfd, nname)

    def unlink(self, dirfd: int, name: bytes, isdir: bool) -> None:
        self.check_writable()
        self.check_name(name)
        if name == b".":
            raise OSError(errno.EINVAL, "cannot remove .")
        if name == b"..":
            raise OSError(errno.ENOTEMPTY, "cannot remove ..")
        if isdir:
            self.model.before_rmdir(dirfd, name)
            os.rmdir(name, dir_fd=dirfd)
        else:
            os.unlink(name, dir_fd=dirfd)
        self.model.unlinked(dirfd, name, isdir)

    # -- directories --------------------------------------------------------

    def readdir(self, fd: int, offset: int, count: int, reader: DirReader) -> bytes:
        """Packed Rreaddir payload of at most `count` bytes starting at cookie `offset`.

        No stat per entry: qid.type comes from d_type and qid.version is 0, as in QEMU.
        """
        dev = os.fstat(fd).st_dev
        qpath = self.qidmap.path
        hidden = self.model.hidden
        if getattr(type(self.model), "hidden", None) is Passthrough.hidden:
            hidden = None  # hides nothing: skip a call per entry
        return reader.pack(fd, offset, count, self.qidmap.base(dev), lambda ino: qpath(dev, ino),
                           hidden, self.model.mapped)

    def xattr_host_name(self, name: bytes, for_write: bool) -> bytes:
        # A NUL would end the name early in the syscall (and os.*xattr raise ValueError): found by fuzzing.
        if b"\0" in name:
            raise OSError(errno.EINVAL, "NUL in an xattr name")
        return self.model.xattr_name(name, for_write)

    def xattr_get(self, fd: int, name: bytes) -> bytes:
        return H.getxattr(fd, self.xattr_host_name(name, False))

    def xattr_list(self, fd: int) -> bytes:
        names = [os.fsencode(n) for n in H.listxattr(fd)]
        m = self.model
        return b"".join(m.xattr_guest_name(n) + b"\0" for n in names if m.xattr_visible(n))

    def xattr_set(self, fd: int, name: bytes, value: bytes, flags: int) -> None:
        self.check_writable()
        H.setxattr(fd, self.xattr_host_name(name, True), value, flags)

    def xattr_remove(self, fd: int, name: bytes) -> None:
        self.check_writable()
        H.removexattr(fd, self.xattr_host_name(name, True))


def _time_arg(valid: int, bit: int, set_bit: int, t: tuple[int, int]):
    if not valid & bit:
        return H.UTIME_OMIT
    if valid & set_bit:
        return t
    return H.UTIME_NOW
