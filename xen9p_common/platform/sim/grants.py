"""Simulated guest memory and grant tables shared by processes through files in the sim dir.

A guest (SimDomainMemory) grants pages; a backend (SimGrantMapper) maps refs like gntdev does.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct
from typing import Sequence

from ...errors import PlatformError
from .. import GrantMapper, GrantMapping

PAGE_SIZE = 4096

# struct grant_entry_v1 {u16 flags; u16 domid; u32 frame}: domid is the grantee.
GRANT_ENTRY = struct.Struct("<HHI")
GTF_invalid = 0
GTF_permit_access = 1
GTF_type_mask = 3
GTF_readonly = 1 << 2

# Linux never hands out the first refs (GNTTAB_NR_RESERVED_ENTRIES), so ref 0 is never valid.
NR_RESERVED_ENTRIES = 8
DEFAULT_GRANT_ENTRIES = 8192  # two order-9 rings need 1026; leave room for more devices

# struct flock for F_OFD_* (Linux x86-64 / arm64 layout): l_type, l_whence, l_start, l_len, l_pid
_FLOCK = struct.Struct("hhqqi4x")


def platform_error(err: int, msg: str) -> PlatformError:
    """A PlatformError that carries an errno like XenStoreError does."""
    return PlatformError(f"{msg}: {os.strerror(err)}", err)


def mem_dir(sim_dir: str) -> str:
    return os.path.join(sim_dir, "mem")


def pages_path(sim_dir: str, domid: int) -> str:
    return os.path.join(mem_dir(sim_dir), f"dom{domid}.pages")


def gnttab_path(sim_dir: str, domid: int) -> str:
    return os.path.join(mem_dir(sim_dir), f"dom{domid}.gnttab")


def _ofd_lock(fd: int, kind: int, start: int, length: int, wait: bool) -> bool:
    """Open-file-description lock: owned by this open, dropped by the kernel when it closes.

    Mappings hold read locks on the entries they map, so a frontend's end_access can see
    that a grant is still in use even after the mapping process crashed (lock released).
    """
    arg = _FLOCK.pack(kind, os.SEEK_SET, start, length, 0)
    cmd = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
    try:
        fcntl.fcntl(fd, cmd, arg)
    except OSError as e:
        if not wait and e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _atomic_create(path: str, size: int) -> None:
    """A fresh zero-filled file at path; a half-made file is never visible under the name."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class SimDomainMemory:
    """The guest side: a domain's pages and its grant table (what a frontend kernel owns)."""

    def __init__(self, sim_dir: str, domid: int, pages: int,
                 grant_entries: int = DEFAULT_GRANT_ENTRIES) -> None:
        if pages <= 0 or grant_entries <= NR_RESERVED_ENTRIES:
            raise ValueError("a domain needs pages and a grant table")
        self.sim_dir = sim_dir
        self.domid = domid
        self.pages = pages
        self.grant_entries = grant_entries
        os.makedirs(mem_dir(sim_dir), exist_ok=True)
        _atomic_create(pages_path(sim_dir, domid), pages * PAGE_SIZE)
        _atomic_create(gnttab_path(sim_dir, domid), grant_entries * GRANT_ENTRY.size)
        self._mem_fd = os.open(pages_path(sim_dir, domid), os.O_RDWR | os.O_CLOEXEC)
        self._gnt_fd = os.open(gnttab_path(sim_dir, domid), os.O_RDWR | os.O_CLOEXEC)
        self._mem = mmap.mmap(self._mem_fd, pages * PAGE_SIZE, mmap.MAP_SHARED)
        self._gnt = mmap.mmap(self._gnt_fd, grant_entries * GRANT_ENTRY.size, mmap.MAP_SHARED)
        self._mem_view = memoryview(self._mem)
        self._free_frames = list(range(pages - 1, -1, -1))
        self._free_refs = list(range(grant_entries - 1, NR_RESERVED_ENTRIES - 1, -1))

    # -- pages ---------------------------------------------------------------------
    def alloc_pages(self, n: int) -> list[int]:
        if n > len(self._free_frames):
            raise platform_error(errno.ENOMEM, f"dom{self.domid} has {len(self._free_frames)} free pages")
        return [self._free_frames.pop() for _ in range(n)]

    def free_pages(self, frames: Sequence[int]) -> None:
        self._free_frames.extend(frames)

    def page(self, frame: int) -> memoryview:
        if not 0 <= frame < self.pages:
            raise platform_error(errno.EINVAL, f"dom{self.domid} has no frame {frame}")
        return self._mem_view[frame * PAGE_SIZE:(frame + 1) * PAGE_SIZE]

    def pages_view(self, first: int, count: int) -> memoryview:
        """Consecutive frames as one view (the guest kernel sees a run of its pages as one buffer)."""
        if count <= 0 or not 0 <= first <= self.pages - count:
            raise platform_error(errno.EINVAL, f"dom{self.domid} has no frames {first}..{first + count - 1}")
        return self._mem_view[first * PAGE_SIZE:(first + count) * PAGE_SIZE]

    # -- grants --------------------------------------------------------------------
    def grant_access(self, frame: int, to_domid: int, readonly: bool = False) -> int:
        if not 0 <= frame < self.pages:
            raise platform_error(errno.EINVAL, f"dom{self.domid} has no frame {frame}")
        if not self._free_refs:
            raise platform_error(errno.ENOSPC, f"dom{self.domid} grant table is full")
        ref = self._free_refs.pop()
        off = ref * GRANT_ENTRY.size
        # Grantee and frame first, flags last: a mapper never sees a valid half-written entry.
        struct.pack_into("<HI", self._gnt, off + 2, to_domid, frame)
        struct.pack_into("<H", self._gnt, off,
                         GTF_permit_access | (GTF_readonly if readonly else 0))
        return ref

    def entry(self, ref: int) -> tuple[int, int, int]:
        """(flags, domid, frame) of a grant entry, for tests and diagnostics."""
        return GRANT_ENTRY.unpack_from(self._gnt, ref * GRANT_ENTRY.size)

    def end_access(self, ref: int) -> None:
        """Revoke a grant; EBUSY while some backend still maps it (Linux then retries later)."""
        if not NR_RESERVED_ENTRIES <= ref < self.grant_entries:
            raise platform_error(errno.EINVAL, f"dom{self.domid} has no grant ref {ref}")
        off = ref * GRANT_ENTRY.size
        if not _ofd_lock(self._gnt_fd, fcntl.F_WRLCK, off, GRANT_ENTRY.size, wait=False):
            raise platform_error(errno.EBUSY, f"dom{self.domid} grant ref {ref} is mapped")
        try:
            struct.pack_into("<H", self._gnt, off, GTF_invalid)
            struct.pack_into("<HI", self._gnt, off + 2, 0, 0)
        finally:
            _ofd_lock(self._gnt_fd, fcntl.F_UNLCK, off, GRANT_ENTRY.size, wait=False)
        if ref not in self._free_refs:
            self._free_refs.append(ref)

    # -- lifetime ------------------------------------------------------------------
    def close(self) -> None:
        if self._mem_fd < 0:
            return
        self._mem_view.release()
        for region in (self._mem, self._gnt):
            try:
                region.close()
            except BufferError:
                pass  # page() views are still alive: the mapping goes when the last one does
        os.close(self._mem_fd)
        os.close(self._gnt_fd)
        self._mem_fd = self._gnt_fd = -1

    def destroy(self) -> None:
        """Close and remove the domain's files; existing backend mappings keep their pages."""
        self.close()
        for path in (pages_path(self.sim_dir, self.domid), gnttab_path(self.sim_dir, self.domid)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = getattr(mmap, "MAP_FIXED", 0x10)


class SimGrantMapping(GrantMapping):
    """Pages of a guest placed side by side in one reserved region, as gntdev does."""

    def __init__(self, region: mmap.mmap, gnt_fd: int, writable: bool) -> None:
        self._region: mmap.mmap | None = region
        self._gnt_fd = gnt_fd  # holds the read locks that mark the grants in use
        view = memoryview(region)
        self.buf = view if writable else view.toreadonly()
        self._views = [view, self.buf]

    def unmap(self) -> None:
        if self._region is None:
            return
        for view in self._views:
            view.release()
        try:
            self._region.close()
        except BufferError as e:
            raise platform_error(errno.EBUSY, "grant mapping still has views into it") from e
        self._region = None
        os.close(self._gnt_fd)


class SimGrantMapper(GrantMapper):
    """The backend side: maps refs that a simulated guest granted to `self_domid`."""

    def __init__(self, sim_dir: str, self_domid: int = 0) -> None:
        self.sim_dir = sim_dir
        self.self_domid = self_domid

    def map(self, domid: int, refs: Sequence[int], writable: bool = True) -> SimGrantMapping:
        if not refs:
            raise platform_error(errno.EINVAL, "no grant refs to map")
        try:
            gnt_fd = os.open(gnttab_path(self.sim_dir, domid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise platform_error(errno.ESRCH, f"no simulated dom{domid}") from e
        try:
            mem_fd = os.open(pages_path(self.sim_dir, domid), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as e:
            os.close(gnt_fd)
            raise platform_error(errno.ESRCH, f"no simulated dom{domid}") from e
        try:
            frames = self._check_and_lock(gnt_fd, mem_fd, domid, refs, writable)
            region = self._map_frames(mem_fd, frames, writable)
        except BaseException:
            os.close(gnt_fd)  # drops every lock taken so far
            raise
        finally:
            os.close(mem_fd)  # the page mappings keep the file alive
        return SimGrantMapping(region, gnt_fd, writable)

    def _check_and_lock(self, gnt_fd: int, mem_fd: int, domid: int, refs: Sequence[int],
                        writable: bool) -> list[int]:
        entries = os.fstat(gnt_fd).st_size // GRANT_ENTRY.size
        frames_in_mem = os.fstat(mem_fd).st_size // PAGE_SIZE
        frames = []
        for ref in refs:
            if not NR_RESERVED_ENTRIES <= ref < entries:
                raise platform_error(errno.EINVAL, f"dom{domid} grant ref {ref} out of range")
            off = ref * GRANT_ENTRY.size
            # Lock before reading: end_access cannot revoke between our check and our map.
            _ofd_lock(gnt_fd, fcntl.F_RDLCK, off, GRANT_ENTRY.size, wait=True)
            flags, grantee, frame = GRANT_ENTRY.unpack(os.pread(gnt_fd, GRANT_ENTRY.size, off))
            if flags & GTF_type_mask != GTF_permit_access:
                raise platform_error(errno.EINVAL, f"dom{domid} grant ref {ref} is not granted")
            if grantee != self.self_domid:
                raise platform_error(errno.EPERM,
                                     f"dom{domid} grant ref {ref} is for dom{grantee}, not dom{self.self_domid}")
            if writable and flags & GTF_readonly:
                raise platform_error(errno.EPERM, f"dom{domid} grant ref {ref} is read-only")
            if frame >= frames_in_mem:
                raise platform_error(errno.EINVAL, f"dom{domid} grant ref {ref} names a bad frame")
            frames.append(frame)
        return frames

    @staticmethod
    def _map_frames(mem_fd: int, frames: Sequence[int], writable: bool) -> mmap.mmap:
        size = len(frames) * PAGE_SIZE
        # Reserve the whole range with a Python mmap (so close() refuses while views exist),
        # then place each granted page over it.
        region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(region))
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        for i, frame in enumerate(frames):
            addr = _libc.mmap(base + i * PAGE_SIZE, PAGE_SIZE, prot, mmap.MAP_SHARED | _MAP_FIXED,
                              mem_fd, frame * PAGE_SIZE)
            if addr == _MAP_FAILED:
                err = ctypes.get_errno()
                region.close()
                raise platform_error(err or errno.ENOMEM, "mmap of a granted page")
        return region

    def close(self) -> None:
        pass
