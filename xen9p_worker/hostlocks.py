"""Guest locks the host sees: every range the lock table grants is also held by an OFD lock on the file.

One open file description (OFD) per (device, file) holds the device's locks on that file: the
device's own owners never conflict on the host (the lock table parts them, and one OFD never
conflicts with itself), while another device, another guest or a host process does conflict.
Its byte ranges carry, at each byte, the strongest lock any owner of the device holds there
(`locks.coverage`), so an unlock or a downgrade never needs a host lock it might not get.

The OFDs live in the device's lock keeper (lockkeeper.py), a small process that outlives ring
workers, so a worker that dies releases nothing its guest holds. A worker gets an OFD from the
keeper over a Unix socket (SCM_RIGHTS passes the same open file description) and sets locks on it
with the lock table's mutex held; the first worker that needs the keeper starts it.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections import OrderedDict
from typing import Callable

from xen9p_common.p9.constants import LOCK_TYPE_RDLCK, LOCK_TYPE_UNLCK, LOCK_TYPE_WRLCK

from .backend.hostops import OFF_MAX
from .locks import INF, Lock, coverage

log = logging.getLogger("xen9p.locks")

# struct flock (x86-64/arm64): l_type h, l_whence h, l_start q, l_len q, l_pid i (+pad)
_FLOCK = struct.Struct("hhqqi4x")
_OFF_MAX = OFF_MAX
_HOST_TYPE = {LOCK_TYPE_RDLCK: fcntl.F_RDLCK, LOCK_TYPE_WRLCK: fcntl.F_WRLCK, LOCK_TYPE_UNLCK: fcntl.F_UNLCK}
_P9_TYPE = {v: k for k, v in _HOST_TYPE.items()}
HOST_CLIENT = "host"  # client_id Tgetlock reports for a holder outside this device

# Keeper protocol (SOCK_SEQPACKET): b"A" + 16-byte key [+ an fd] -> b"K" + the keeper's fd, or b"N"
# (no fd given and none kept); b"U" -> every kept OFD unlocked, b"K".
REQ_ADOPT, REQ_UNLOCK_ALL, REP_OK, REP_NONE = b"A", b"U", b"K", b"N"


def keeper_address(segment_fd: int) -> str:
    """The keeper's abstract socket name: from the device state segment's inode, which stays the same
    when a newly started xen9pd adopts the device and renames the segment (a name would not)."""
    st = os.fstat(segment_fd)
    return f"\0xen9p-locks-{st.st_dev}-{st.st_ino}"


def _flock(type_: int, s: int, e: int) -> bytes | None:
    """struct flock for [s, e) (e = INF: to EOF); None when the range is beyond what off_t holds."""
    if s > _OFF_MAX:
        return None
    length = 0 if e >= INF or e - 1 > _OFF_MAX else e - s
    return _FLOCK.pack(_HOST_TYPE[type_], os.SEEK_SET, s, length, 0)


def ofd_set(fd: int, type_: int, s: int, e: int) -> bool:
    """Set (or clear) [s, e) on the OFD without waiting; False when another holder conflicts."""
    fl = _flock(type_, s, e)
    if fl is None:
        return True
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, fl)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if err.errno == errno.EBADF:  # a write lock on a file only readable on the host
            return False
        raise
    return True


def ofd_test(fd: int, type_: int, s: int, e: int) -> Lock | None:
    """The first host lock outside this OFD that conflicts with type_ on [s, e), or None."""
    fl = _flock(type_, s, e)
    if fl is None:
        return None
    t, _, start, length, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, fl))
    if t == fcntl.F_UNLCK:
        return None
    # An OFD holder has no pid (-1); a classic POSIX lock reports its process.
    return Lock(start, INF if length == 0 else start + length, _P9_TYPE[t], (HOST_CLIENT, max(pid, 0)))


def apply_coverage(fd: int, locks: list[Lock], s: int, e: int) -> None:
    """Make the OFD hold, on [s, e), what `locks` (all the device's locks on the file) cover."""
    for a, b, t in coverage(locks, s, e):
        if not ofd_set(fd, t, a, b):  # only reached by undoing a failed change
            log.warning("host lock %d..%d could not be restored (type %d)", a, b, t)


def open_for_locks(fd: int) -> int:
    """A new OFD on the file `fd` names (read-write if possible, so it can hold write locks); -1 if not a file."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return -1
    path = f"/proc/self/fd/{fd}"
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)


class HostLocks:
    """A worker's link to its device's lock keeper, and a small cache of the OFDs it handed out."""

    def __init__(self, state_name: str, segment_fd: int, cache: int = 64) -> None:
        self.state_name = state_name  # for the log
        self.segment_fd = segment_fd
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._max = cache
        self._sock: socket.socket | None = None
        self._mu = threading.Lock()
        self._keeper: subprocess.Popen | None = None

    def fd(self, kd: bytes, opener: Callable[[], int] | None) -> int | None:
        """The device's OFD for the file with key digest kd (opened with `opener` if the keeper has none)."""
        with self._mu:
            fd = self._cache.get(kd)
            if fd is not None:
                self._cache.move_to_end(kd)
                return fd
            mine = opener() if opener is not None else -1
            try:
                reply, fds = self._ask(REQ_ADOPT + kd, [mine] if mine >= 0 else [])
            finally:
                if mine >= 0:
                    os.close(mine)
            if reply != REP_OK or not fds:
                return None
            self._cache[kd] = fds[0]
            while len(self._cache) > self._max:
                os.close(self._cache.popitem(last=False)[1])
            return fds[0]

    def unlock_all(self) -> None:
        with self._mu:
            self._ask(REQ_UNLOCK_ALL, [])

    def close(self) -> None:
        with self._mu:
            for fd in self._cache.values():
                os.close(fd)
            self._cache.clear()
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    # -- the keeper ---------------------------------------------------------------------

    def _ask(self, req: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
        for attempt in (0, 1):
            if self._sock is None:
                self._sock = self._connect()
            try:
                socket.send_fds(self._sock, [req], fds)
                msg, got, _, _ = socket.recv_fds(self._sock, 64, 1)
            except OSError:
                self._sock.close()
                self._sock = None
                if attempt:
                    raise
                continue
            if not msg:  # the keeper went away: start (or find) a new one once
                self._sock.close()
                self._sock = None
                if attempt:
                    raise OSError(errno.ENOLCK, "the device's lock keeper is gone")
                continue
            return msg, got
        raise AssertionError("unreachable")

    def _connect(self) -> socket.socket:
        addr = keeper_address(self.segment_fd)
        for _ in range(100):  # another worker may be between bind() and listen()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            try:
                s.connect(addr)
                return s
            except (ConnectionRefusedError, FileNotFoundError):
                s.close()
            if self._start_keeper(addr):
                continue
            os.sched_yield()
        raise OSError(errno.ENOLCK, "cannot reach the device's lock keeper")

    def _start_keeper(self, addr: str) -> bool:
        """Bind the keeper's socket and start it on that socket; False if another process holds the name."""
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            lst.bind(addr)
        except OSError as e:
            lst.close()
            if e.errno == errno.EADDRINUSE:
                return False
            raise
        # The keeper gets an open file description of the segment of its own: ours carries this worker's
        # OFD locks (ring claim, mutexes), which an inherited copy would hold for as long as the keeper lives.
        seg = -1
        try:
            seg = os.open(f"/proc/self/fd/{self.segment_fd}", os.O_RDONLY | os.O_CLOEXEC)
            lst.listen(64)
            self._keeper = subprocess.Popen(
                [sys.executable, "-m", "xen9p_worker", "lockkeeper", "--segment-fd", str(seg),
                 "--listen-fd", str(lst.fileno())],
                pass_fds=(lst.fileno(), seg), start_new_session=True, stdin=subprocess.DEVNULL)
        finally:
            lst.close()
            if seg >= 0:
                os.close(seg)
        log.info("started the lock keeper of %s (pid %d)", self.state_name, self._keeper.pid)
        return True
