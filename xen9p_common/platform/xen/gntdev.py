"""Foreign grant mapping on a real dom0 through /dev/xen/gntdev (ioctl + mmap).

Layouts and ioctl numbers follow Linux include/uapi/xen/gntdev.h (see reference/xen-9pfs.md).
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import time
from typing import Sequence

from ...errors import PlatformError
from .. import GrantMapper, GrantMapping

PAGE_SIZE = 4096
GNTDEV_PATH = "/dev/xen/gntdev"

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_NONE = 0


def ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """Linux _IOC(); the Xen device headers use _IOC_NONE for every ioctl."""
    return ((direction << _IOC_DIRSHIFT) | (size << _IOC_SIZESHIFT)
            | (ord(kind) << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT))


# struct ioctl_gntdev_map_grant_ref {u32 count; u32 pad; u64 index; grant_ref refs[1]}
MAP_GRANT_REF_HDR = struct.Struct("=IIQ")
# struct ioctl_gntdev_grant_ref {u32 domid; u32 ref}
GRANT_REF = struct.Struct("=II")
# struct ioctl_gntdev_unmap_grant_ref {u64 index; u32 count; u32 pad}
UNMAP_GRANT_REF = struct.Struct("=QII")
# struct ioctl_gntdev_get_offset_for_vaddr {u64 vaddr; u64 offset; u32 count; u32 pad}
GET_OFFSET_FOR_VADDR = struct.Struct("=QQII")
# struct ioctl_gntdev_set_max_grants {u32 count}
SET_MAX_GRANTS = struct.Struct("=I")
# struct ioctl_gntdev_unmap_notify {u64 index; u32 action; u32 event_channel_port}
UNMAP_NOTIFY = struct.Struct("=QII")

# The number encodes the size of the struct with exactly one ref; longer buffers
# are passed with the same number (the driver reads `count` refs).
IOCTL_GNTDEV_MAP_GRANT_REF = ioc(_IOC_NONE, "G", 0, MAP_GRANT_REF_HDR.size + GRANT_REF.size)
IOCTL_GNTDEV_UNMAP_GRANT_REF = ioc(_IOC_NONE, "G", 1, UNMAP_GRANT_REF.size)
IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR = ioc(_IOC_NONE, "G", 2, GET_OFFSET_FOR_VADDR.size)
IOCTL_GNTDEV_SET_MAX_GRANTS = ioc(_IOC_NONE, "G", 3, SET_MAX_GRANTS.size)
IOCTL_GNTDEV_SET_UNMAP_NOTIFY = ioc(_IOC_NONE, "G", 7, UNMAP_NOTIFY.size)

UNMAP_NOTIFY_CLEAR_BYTE = 0x1
UNMAP_NOTIFY_SEND_EVENT = 0x2

# Paged-out guest frames make the hypervisor answer EAGAIN; libxengnttab retries.
EAGAIN_RETRY_SECONDS = 1.0


def platform_error(err: int, msg: str) -> PlatformError:
    """A PlatformError that carries an errno like XenStoreError does."""
    return PlatformError(f"{msg}: {os.strerror(err)}", err)


def pack_map_grant_ref(domid: int, refs: Sequence[int]) -> bytearray:
    """The MAP_GRANT_REF argument for `refs` of `domid` (index is filled in by the kernel)."""
    buf = bytearray(MAP_GRANT_REF_HDR.size + GRANT_REF.size * len(refs))
    MAP_GRANT_REF_HDR.pack_into(buf, 0, len(refs), 0, 0)
    off = MAP_GRANT_REF_HDR.size
    for ref in refs:
        GRANT_REF.pack_into(buf, off, domid, ref)
        off += GRANT_REF.size
    return buf


def map_index(buf: bytes | bytearray) -> int:
    """The mmap offset the kernel wrote into a MAP_GRANT_REF argument."""
    return MAP_GRANT_REF_HDR.unpack_from(buf, 0)[2]


def pack_unmap_grant_ref(index: int, count: int) -> bytearray:
    return bytearray(UNMAP_GRANT_REF.pack(index, count, 0))


def _retry_eagain(fn):
    deadline = time.monotonic() + EAGAIN_RETRY_SECONDS
    while True:
        try:
            return fn()
        except OSError as e:
            if e.errno != errno.EAGAIN or time.monotonic() >= deadline:
                raise
            os.sched_yield()


class GntdevMapping(GrantMapping):
    """One MAP_GRANT_REF reservation plus its mmap."""

    def __init__(self, fd: int, index: int, count: int, mm: mmap.mmap, writable: bool) -> None:
        self._fd = fd
        self.index = index
        self.count = count
        self._mmap: mmap.mmap | None = mm
        view = memoryview(mm)
        self.buf = view if writable else view.toreadonly()
        self._views = [view, self.buf]

    def unmap(self) -> None:
        if self._mmap is None:
            return
        for view in self._views:
            view.release()
        try:
            # munmap first: the kernel keeps the grant until no VMA references it.
            self._mmap.close()
        except BufferError as e:
            raise platform_error(errno.EBUSY, "grant mapping still has views into it") from e
        self._mmap = None
        try:
            fcntl.ioctl(self._fd, IOCTL_GNTDEV_UNMAP_GRANT_REF,
                        pack_unmap_grant_ref(self.index, self.count), True)
        except OSError as e:
            raise platform_error(e.errno or errno.EIO, "gntdev UNMAP_GRANT_REF") from e


class GntdevMapper(GrantMapper):
    """Maps foreign grant refs contiguously, as libxengnttab does on Linux."""

    def __init__(self, path: str = GNTDEV_PATH) -> None:
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise platform_error(e.errno or errno.EIO, f"open {path}") from e

    def map(self, domid: int, refs: Sequence[int], writable: bool = True) -> GntdevMapping:
        if not refs:
            raise platform_error(errno.EINVAL, "no grant refs to map")
        arg = pack_map_grant_ref(domid, refs)
        try:
            _retry_eagain(lambda: fcntl.ioctl(self._fd, IOCTL_GNTDEV_MAP_GRANT_REF, arg, True))
        except OSError as e:
            raise platform_error(e.errno or errno.EIO, f"gntdev MAP_GRANT_REF dom{domid}") from e
        index = map_index(arg)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        try:
            mm = _retry_eagain(lambda: mmap.mmap(self._fd, len(refs) * PAGE_SIZE,
                                                 flags=mmap.MAP_SHARED, prot=prot, offset=index))
        except OSError as e:
            # The reservation must not leak when the hypervisor refused a ref.
            try:
                fcntl.ioctl(self._fd, IOCTL_GNTDEV_UNMAP_GRANT_REF,
                            pack_unmap_grant_ref(index, len(refs)), True)
            except OSError:
                pass
            raise platform_error(e.errno or errno.EIO, f"gntdev mmap of dom{domid} refs") from e
        return GntdevMapping(self._fd, index, len(refs), mm, writable)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
