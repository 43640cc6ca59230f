"""The fid table of one 9P session: fid number -> plain-data entry, behind a small interface.

Entries hold no OS resources, so a shared-memory table (one per device, shared by
all ring workers) can replace `LocalFidTable` without touching dispatch.
"""
from __future__ import annotations

import abc
import errno
import itertools
import threading
from dataclasses import dataclass, replace

from xen9p_common.p9 import Qid

# FidEntry.kind
FID_PATH = 0        # walked or attached, not open
FID_FILE = 1        # opened regular file
FID_DIR = 2         # opened directory (Treaddir)
FID_XATTR_READ = 3  # Txattrwalk result: value (or name list) read with Tread
FID_XATTR_WRITE = 4  # Txattrcreate: value written with Twrite, applied at Tclunk
_OPEN_KINDS = (FID_FILE, FID_DIR)


@dataclass(slots=True)
class FidEntry:
    """Everything a worker needs to serve a fid, as plain data.

    `path` is relative to the export root, components joined by b"/" (b"" is the
    root). `generation` makes (fid, generation) a unique key for per-process fd
    caches even when a fid number is reused. `holder_pid`/`holder_fd` name the
    process and fd that keep an open file alive, so another process can reopen an
    unlinked file through /proc/<pid>/fd/<n>.
    """

    kind: int
    path: bytes
    qid: Qid
    uid: int
    open_flags: int = -1
    generation: int = 0
    holder_pid: int = 0
    holder_fd: int = -1
    xattr_name: bytes = b""
    xattr_size: int = 0
    xattr_flags: int = 0
    xattr_value: bytes = b""
    rclose: bool = False     # opened with ORCLOSE (9P2000.u): removed at clunk
    dir_offset: int = 0      # .u directory read: the byte offset the next Tread continues at
    dir_cookie: int = 0      # ... and the getdents cookie of that offset

    def copy(self, **changes) -> "FidEntry":
        return replace(self, **changes)


def _is_under(path: bytes, prefix: bytes) -> bool:
    return path == prefix or path.startswith(prefix + b"/")


class FidTable(abc.ABC):
    """fid -> FidEntry for one session (or one device). All methods are thread-safe."""

    max_fids: int

    @abc.abstractmethod
    def get(self, fid: int) -> FidEntry:
        """The entry of fid; OSError(ENOENT) if it is not in use (QEMU's answer)."""

    @abc.abstractmethod
    def add(self, fid: int, entry: FidEntry) -> FidEntry:
        """Insert a new fid with a fresh generation; EEXIST if in use, EMFILE at max_fids."""

    @abc.abstractmethod
    def update(self, fid: int, entry: FidEntry) -> None:
        """Replace the entry of an existing fid (same generation); ENOENT if absent."""

    @abc.abstractmethod
    def remove(self, fid: int) -> FidEntry:
        """Remove and return the entry; ENOENT if absent."""

    @abc.abstractmethod
    def clear(self) -> list[tuple[int, FidEntry]]:
        """Remove every fid; returns what was removed so callers can release resources."""

    @abc.abstractmethod
    def rename_subtree(self, old_rel: bytes, new_rel: bytes) -> int:
        """Rewrite the path of every fid at or below old_rel; returns how many changed."""

    @abc.abstractmethod
    def count(self) -> int:
        """How many fids are in use."""

    @abc.abstractmethod
    def count_open(self) -> int:
        """How many fids are open files or directories (for the max-open-files limit)."""

    @abc.abstractmethod
    def open_files_at(self, path: bytes) -> list[tuple[int, FidEntry]]:
        """Fids open on the regular file at path (whose fds must survive the name going)."""

    @abc.abstractmethod
    def mark_reclaimed(self) -> None:
        """Some process closed an open fid's fd under host fd pressure (fdcache)."""

    @abc.abstractmethod
    def reclaimed(self) -> bool:
        """Whether mark_reclaimed() ever ran: only then can a name going leave an open fid without an fd."""


class LocalFidTable(FidTable):
    """The in-process table: a dict under a lock."""

    def __init__(self, max_fids: int = 1 << 20) -> None:
        self.max_fids = max_fids
        self._d: dict[int, FidEntry] = {}
        self._lock = threading.Lock()
        self._gen = itertools.count(1)
        self._open = 0  # kept in step with _d so the open-files limit check is O(1)
        self._reclaimed = False

    def get(self, fid: int) -> FidEntry:
        # dict.get is atomic under the GIL: the hot path takes no lock.
        e = self._d.get(fid)
        if e is None:
            raise OSError(errno.ENOENT, f"fid {fid} not in use")
        return e

    def add(self, fid: int, entry: FidEntry) -> FidEntry:
        with self._lock:
            if fid in self._d:
                raise OSError(errno.EEXIST, f"fid {fid} already in use")
            if len(self._d) >= self.max_fids:
                raise OSError(errno.EMFILE, f"fid limit {self.max_fids} reached")
            entry.generation = next(self._gen)
            self._d[fid] = entry
            self._open += entry.kind in _OPEN_KINDS
            return entry

    def update(self, fid: int, entry: FidEntry) -> None:
        with self._lock:
            old = self._d.get(fid)
            if old is None:
                raise OSError(errno.ENOENT, f"fid {fid} not in use")
            entry.generation = old.generation
            self._d[fid] = entry
            self._open += (entry.kind in _OPEN_KINDS) - (old.kind in _OPEN_KINDS)

    def remove(self, fid: int) -> FidEntry:
        with self._lock:
            e = self._d.pop(fid, None)
            if e is not None:
                self._open -= e.kind in _OPEN_KINDS
        if e is None:
            raise OSError(errno.ENOENT, f"fid {fid} not in use")
        return e

    def clear(self) -> list[tuple[int, FidEntry]]:
        with self._lock:
            items = list(self._d.items())
            self._d.clear()
            self._open = 0
        return items

    def rename_subtree(self, old_rel: bytes, new_rel: bytes) -> int:
        n = 0
        with self._lock:
            for fid, e in self._d.items():
                if _is_under(e.path, old_rel):
                    self._d[fid] = e.copy(path=new_rel + e.path[len(old_rel):])
                    n += 1
        return n

    def count(self) -> int:
        return len(self._d)

    def count_open(self) -> int:
        return self._open

    def open_files_at(self, path: bytes) -> list[tuple[int, FidEntry]]:
        with self._lock:
            return [(f, e) for f, e in self._d.items() if e.kind == FID_FILE and e.path == path]

    def mark_reclaimed(self) -> None:
        self._reclaimed = True

    def reclaimed(self) -> bool:
        return self._reclaimed
