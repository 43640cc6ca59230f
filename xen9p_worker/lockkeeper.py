"""`python -m xen9p_worker lockkeeper`: holds one device's host lock OFDs (see hostlocks.py).

Started by the first ring worker that needs it, on a listening socket that worker bound; it is
in a session of its own and no worker's child after that worker dies, so the OFDs - and the locks
the device's guest holds through them - outlive any worker, and any xen9pd too (a restarted
daemon adopts the device and renames its segment; the keeper is found by the segment's inode).
It exits, dropping them all, when the device goes: its state segment unlinked (a closed device,
or a dead daemon's leftover swept by the next one).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import resource
import selectors
import socket
import sys

from .hostlocks import REP_NONE, REP_OK, REQ_ADOPT, REQ_UNLOCK_ALL, ofd_set
from .locks import INF
from xen9p_common.p9.constants import LOCK_TYPE_UNLCK

_CHECK_EVERY = 1.0  # seconds between checks that the device still exists (inotify says it at once)
_IN_ATTRIB, _IN_DELETE_SELF = 0x4, 0x400
_IN_NONBLOCK_CLOEXEC = os.O_NONBLOCK | os.O_CLOEXEC


def watch_links(fd: int) -> int | None:
    """An inotify fd that becomes readable when the file open as `fd` loses a name (unlink changes
    its link count: IN_ATTRIB), so the keeper exits as soon as xen9pd frees the device; None if the
    kernel refuses (the periodic check still ends the keeper)."""
    libc = ctypes.CDLL(None, use_errno=True)
    ino = libc.inotify_init1(_IN_NONBLOCK_CLOEXEC)
    if ino < 0:
        return None
    if libc.inotify_add_watch(ino, f"/proc/self/fd/{fd}".encode(), _IN_ATTRIB | _IN_DELETE_SELF) < 0:
        os.close(ino)
        return None
    return ino


class Keeper:
    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.files: dict[bytes, int] = {}

    def handle(self, conn: socket.socket) -> bool:
        """Answer one request; False when the worker hung up."""
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 64, 1)
        except OSError:
            return False
        if not msg:
            for fd in fds:
                os.close(fd)
            return False
        reply, out = REP_NONE, []
        if msg[:1] == REQ_ADOPT and len(msg) == 17:
            kd = msg[1:]
            have = self.files.get(kd)
            if have is None and fds:
                have = self.files[kd] = fds.pop(0)
            if have is not None:
                reply, out = REP_OK, [have]
        elif msg == REQ_UNLOCK_ALL:
            for fd in self.files.values():
                ofd_set(fd, LOCK_TYPE_UNLCK, 0, INF)
            reply = REP_OK
        for fd in fds:
            os.close(fd)
        try:
            socket.send_fds(conn, [reply], out)
        except OSError:
            return False
        return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m xen9p_worker lockkeeper")
    p.add_argument("--segment-fd", type=int, required=True, help="the device state segment, inherited")
    p.add_argument("--listen-fd", type=int, required=True)
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.socket(fileno=args.listen_fd)
    seg = args.segment_fd
    try:
        os.fstat(seg)
    except OSError as e:
        print(f"lockkeeper: device state segment: {e}", file=sys.stderr)
        return 1
    keeper = Keeper(listener)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    links = watch_links(seg)
    if links is not None:
        sel.register(links, selectors.EVENT_READ, "links")
    while os.fstat(seg).st_nlink:
        for key, _ in sel.select(_CHECK_EVERY):
            if key.data == "accept":
                conn, _ = listener.accept()
                sel.register(conn, selectors.EVENT_READ, "conn")
            elif key.data == "links":
                try:
                    os.read(links, 4096)  # the loop's condition looks again
                except BlockingIOError:
                    pass
            elif not keeper.handle(key.fileobj):
                sel.unregister(key.fileobj)
                key.fileobj.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
