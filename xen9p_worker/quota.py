"""Per-device quotas from the toolstack's keys: max-files, max-space and auto-delete (xl.cfg p9 options).

max-files counts every name below the export (files, directories, links; the root excluded), max-space the
bytes allocated under it. Counts are measured by walking the export and kept as estimates between walks;
near a limit they are measured exactly. With auto-delete, the oldest regular files no fid holds open are
removed to make room (what xl.cfg documents); otherwise the guest gets ENOSPC.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time

from .backend.secmodel import META_DIR, META_ROOT
from .fids import FID_FILE

log = logging.getLogger("xen9p.quota")

_HIDDEN = (META_DIR, META_ROOT)  # mapped-file bookkeeping: not the guest's files
_TTL = 5.0  # seconds an estimate far from the limit is trusted (other rings create files too)


class Quota:
    """Admission checks for one device in one worker. Thread-safe; 0 means unlimited."""

    def __init__(self, root_fd: int, fids, *, max_files: int = 0, max_space: int = 0, auto_delete: bool = False,
                 clock=time.monotonic) -> None:
        self.root_fd = root_fd
        self.fids = fids
        self.max_files = max_files
        self.max_space = max_space
        self.auto_delete = auto_delete
        self.clock = clock
        self.deleted = 0
        self._mu = threading.Lock()
        self._measured_at: float | None = None
        self._files = self._bytes = 0          # as measured
        self._files_since = self._bytes_since = 0  # admitted by us since

    @property
    def active(self) -> bool:
        return bool(self.max_files or self.max_space)

    # -- admission ------------------------------------------------------------------

    def admit_files(self, n: int = 1) -> None:
        """Before creating n names: ENOSPC (after auto-delete) if max-files would be exceeded."""
        if not self.max_files:
            return
        with self._mu:
            self._admit(files=n, nbytes=0)

    def admit_space(self, growth: int) -> None:
        """Before growing the export by `growth` bytes: ENOSPC (after auto-delete) if max-space would be exceeded."""
        if not self.max_space or growth <= 0:
            return
        with self._mu:
            self._admit(files=0, nbytes=growth)

    def _admit(self, files: int, nbytes: int) -> None:
        if self._stale(files, nbytes):
            self._measure()
        over_files = self.max_files and self._files + self._files_since + files > self.max_files
        over_space = self.max_space and self._bytes + self._bytes_since + nbytes > self.max_space
        if over_files or over_space:
            if not (self.auto_delete and self._make_room(files, nbytes)):
                what = "max-files" if over_files else "max-space"
                raise OSError(errno.ENOSPC, f"device {what} limit reached")
        self._files_since += files
        self._bytes_since += nbytes

    def _stale(self, files: int, nbytes: int) -> bool:
        if self._measured_at is None or self.clock() - self._measured_at > _TTL:
            return True
        # Close to a limit the estimate (which misses other rings' work) is not good enough.
        if self.max_files:
            slack = max(8, self.max_files // 8)
            if self._files + self._files_since + files > self.max_files - slack:
                return True
        if self.max_space:
            slack = max(1 << 20, self.max_space // 8)
            if self._bytes + self._bytes_since + nbytes > self.max_space - slack:
                return True
        return False

    # -- measuring and freeing ---------------------------------------------------------

    def _measure(self, candidates: list | None = None) -> None:
        """Walk the export: names and allocated bytes; with `candidates`, collect (mtime, path, size) of files."""
        files = nbytes = 0
        root_dev = os.fstat(self.root_fd).st_dev
        stack: list[tuple[int, bytes]] = [(os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                                                   dir_fd=self.root_fd), b"")]
        while stack:
            dfd, rel = stack.pop()
            try:
                with os.scandir(dfd) as it:
                    entries = list(it)
                for ent in entries:
                    name = os.fsencode(ent.name)
                    if name in _HIDDEN:
                        continue
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except OSError:
                        continue
                    files += 1
                    nbytes += st.st_blocks * 512
                    path = rel + b"/" + name if rel else name
                    if stat.S_ISDIR(st.st_mode) and st.st_dev == root_dev:
                        try:
                            stack.append((os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                                  dir_fd=dfd), path))
                        except OSError:
                            pass
                    elif candidates is not None and stat.S_ISREG(st.st_mode):
                        candidates.append((st.st_mtime_ns, path, st.st_blocks * 512))
            finally:
                os.close(dfd)
        self._files, self._bytes = files, nbytes
        self._files_since = self._bytes_since = 0
        self._measured_at = self.clock()

    def _open_paths(self) -> set[bytes]:
        out = set()
        snap = getattr(self.fids, "snapshot", None)
        for fid in (snap() if snap is not None else getattr(self.fids, "_d", {})):
            try:
                e = self.fids.get(fid)
            except OSError:
                continue
            if e.kind == FID_FILE:
                out.add(e.path)
        return out

    def _make_room(self, files: int, nbytes: int) -> bool:
        """auto-delete: remove the oldest regular files no fid holds open until the request fits."""
        candidates: list = []
        self._measure(candidates)
        busy = self._open_paths()
        candidates.sort()
        for _, path, size in candidates:
            fits_files = not self.max_files or self._files + files <= self.max_files
            fits_space = not self.max_space or self._bytes + nbytes <= self.max_space
            if fits_files and fits_space:
                return True
            if path in busy:
                continue
            head, _, name = path.rpartition(b"/")
            try:
                dfd = os.open(head or b".", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=self.root_fd)
            except OSError:
                continue
            try:
                os.unlink(name, dir_fd=dfd)
            except OSError:
                continue
            finally:
                os.close(dfd)
            self._files -= 1
            self._bytes -= size
            self.deleted += 1
            log.info("auto-delete: removed %s (oldest file not open) to stay within the device's limits",
                     os.fsdecode(path))
        return ((not self.max_files or self._files + files <= self.max_files)
                and (not self.max_space or self._bytes + nbytes <= self.max_space))


def quota_for(s) -> Quota:
    """The Quota of session s's device, made on first use from the device state (ring workers) or the limits.

    Kept on the Server (one per worker process), so every session of the device shares its estimates.
    """
    q = s.server.quota
    if q is not None:
        return q
    ds = getattr(s.state, "_ds", None)  # the shared DeviceState behind a ring worker's session
    limits = s.server.limits
    if ds is not None:
        max_files, auto_delete = ds.max_files, ds.auto_delete
        max_space = ds.max_space_mb << 20
    else:
        max_files, auto_delete, max_space = 0, False, limits.max_space or 0
    q = Quota(getattr(s.backend, "root_fd", -1), s.fids, max_files=max_files, max_space=max_space, auto_delete=auto_delete)
    s.server.quota = q
    return q
