"""An export inside a sandbox whose every sibling is watched with inotify: any touch outside is seen.

    sandbox/            watched: children created, deleted, moved, opened, changed
      export/           what the server serves (its own opens are the only events allowed here)
      outside/          watched, with secret (watched) and sub/ (watched)
      decoy             watched

The export is seeded with symlinks that point outside (relative, absolute, to a directory), a fifo
and a socket, so a server that followed a link or opened a special file would show up here.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import socket
import struct
import tempfile

IN_ACCESS, IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE, IN_OPEN = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
IN_ALL_EVENTS = 0xFFF
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")
# What the server may do to the export directory itself, seen from the sandbox's watch.
ALLOWED_ON_EXPORT = IN_OPEN | IN_ACCESS | IN_CLOSE_NOWRITE | IN_CLOSE_WRITE | IN_ATTRIB | IN_MODIFY

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class Inotify:
    def __init__(self) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.paths: dict[int, str] = {}

    def watch(self, path: str, mask: int = IN_ALL_EVENTS) -> None:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.paths[wd] = path

    def read(self) -> list[tuple[str, int, str]]:
        """Every event queued now: (watched path, mask, name)."""
        out = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            off = 0
            while off < len(buf):
                wd, mask, _, n = _EVENT.unpack_from(buf, off)
                name = buf[off + 16:off + 16 + n].rstrip(b"\0").decode("utf-8", "surrogateescape")
                out.append((self.paths.get(wd, f"wd{wd}"), mask, name))
                off += 16 + n

    def close(self) -> None:
        os.close(self.fd)


class Sandbox:
    def __init__(self, prefix: str = "xen9p-fuzz-", parent: str | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix=prefix, dir=parent)
        self.export = os.path.join(self.dir, "export")
        self.outside = os.path.join(self.dir, "outside")
        os.mkdir(self.export)
        os.makedirs(os.path.join(self.outside, "sub"))
        self.secret = os.path.join(self.outside, "secret")
        for p in (self.secret, os.path.join(self.dir, "decoy")):
            with open(p, "wb") as f:
                f.write(b"outside the export\n")
        self._snapshot = self._state()
        self.seed()
        self.ino = Inotify()
        self.ino.watch(self.dir)
        for p in (self.outside, self.secret, os.path.join(self.outside, "sub"), os.path.join(self.dir, "decoy")):
            self.ino.watch(p)

    def seed(self) -> None:
        """(Re)fill the export: files, a dir, links pointing outside, special files."""
        e = self.export
        for name in os.listdir(e):
            p = os.path.join(e, name)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o755)
                shutil.rmtree(p)
            else:
                os.unlink(p)
        os.chmod(e, 0o755)
        with open(os.path.join(e, "a"), "wb") as f:
            f.write(b"a" * 5000)
        os.mkdir(os.path.join(e, "d"))
        with open(os.path.join(e, "d", "f"), "wb") as f:
            f.write(b"f")
        os.symlink("../outside/secret", os.path.join(e, "up"))
        os.symlink(self.secret, os.path.join(e, "abs"))
        os.symlink("../outside", os.path.join(e, "dirup"))
        os.mkfifo(os.path.join(e, "fifo"))
        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(os.path.join(e, "sock"))
        finally:
            s.close()
        self._seeded = self._fingerprint()

    def _fingerprint(self) -> tuple:
        out = []
        for p in (self.export, os.path.join(self.export, "d"), os.path.join(self.export, "a")):
            try:
                st = os.lstat(p)
                out.append((st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def reseed_if_changed(self) -> None:
        """seed() again if the last session changed the export's top level, d/ or a (cheap: 3 stats)."""
        if self._fingerprint() != self._seeded:
            self.seed()

    def _state(self) -> dict:
        out = {}
        for base, dirs, files in os.walk(self.dir):
            if base.startswith(self.export):
                continue
            for n in dirs + files:
                p = os.path.join(base, n)
                if p == self.export:
                    continue
                st = os.lstat(p)
                out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ino)
        return out

    def escapes(self) -> list[str]:
        """What happened outside the export since the last call (empty: nothing)."""
        bad = []
        for path, mask, name in self.ino.read():
            if path == self.dir and name == "export" and not mask & ~(ALLOWED_ON_EXPORT | 0x40000000):
                continue  # the server opening / changing its own root
            bad.append(f"{path}/{name}: mask {mask:#x}")
        return bad

    def changed_outside(self) -> list[str]:
        """Sibling entries whose metadata differs from the start (a second check, without inotify).

        Call escapes() first: the walk's own events are discarded."""
        now = self._state()
        self.ino.read()  # the walk's own opens
        return sorted(p for p in set(now) | set(self._snapshot) if now.get(p) != self._snapshot.get(p))

    def close(self) -> None:
        self.ino.close()
        shutil.rmtree(self.dir, ignore_errors=True)


