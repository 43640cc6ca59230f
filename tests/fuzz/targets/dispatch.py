"""Dispatch (Session) fed sequences of valid-but-nasty requests, on an export inside a watched sandbox.

Each input is one 9P session in one of the four security models: Tversion, Tattach, then up to 24
requests of any type in messages.REGISTRY with fids drawn from a few live, clunked and never-made
ones (so fids of the wrong kind are used everywhere), walks of 0..40 names, names of any bytes,
edge-value counts and offsets, a few mangled frames, some pipelined, and often a Tflush of every
tag at the end.

Properties: submit never raises; no handler hits an unexpected exception (logged as an error);
every request is answered at most once, every one that was not flushed or parked exactly once,
with its own tag, its reply type or Rlerror, never above the negotiated msize; nothing outside the
export is opened, read, written, created or changed (inotify on every sibling, plus a metadata
snapshot); the process's fd count does not grow from session to session.
"""
from __future__ import annotations

import collections
import logging
import os
import threading

from xen9p_common.p9 import messages as M
from xen9p_worker import handlers
from xen9p_worker.backend.local import LocalBackend
from xen9p_worker.dispatch import ENAME_MAX, Limits, Server

from ..draw import Draw
from ..frames import REQUESTS, draw_message, mangle
from ..sandbox import Sandbox
from ..tmpfs import SANDBOX_PARENT_ENV

MODELS = ("passthrough", "none", "mapped-xattr", "mapped-file")
FIDS = (0, 1, 2, 3, 4, M.NOFID)
DEADLINE = 20.0
PARKED = {M.Tlock.TYPE}  # a blocking Tlock may wait until the session closes


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


class _World:
    def __init__(self) -> None:
        # run_one points this at a private tmpfs (tmpfs.py); unset: the default temp directory.
        self.box = Sandbox(parent=os.environ.get(SANDBOX_PARENT_ENV))
        self.servers: dict[tuple[str, bool], Server] = {}
        self.errors = _Errors()
        self.errors.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logging.getLogger("xen9p").addHandler(self.errors)
        self.inputs = 0
        self.fd_base: int | None = None

    def server(self, model: str, pooled: bool) -> Server:
        """Pooled: blocking ops on I/O threads as in a worker (flushes race them); else all inline (fast)."""
        s = self.servers.get((model, pooled))
        if s is None:
            s = Server(LocalBackend(self.box.export, model), msize_cap=65536 + 24, pool_size=4,
                       limits=Limits(max_fids=64, max_open_files=32),
                       inline_ops=None if pooled else frozenset(handlers.TABLE))
            self.servers[(model, pooled)] = s
        return s

    def close(self) -> None:
        for s in self.servers.values():
            s.close()
        logging.getLogger("xen9p").removeHandler(self.errors)
        self.box.close()


_world: _World | None = None


def world() -> _World:
    global _world
    if _world is None:
        _world = _World()
    return _world


def close() -> None:
    global _world
    if _world is not None:
        _world.close()
        _world = None


class Replies:
    """Every reply frame by tag; wait() for a condition on them."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.by_tag: dict[int, list[bytes]] = collections.defaultdict(list)

    def add(self, frame: bytes) -> None:
        frame = bytes(frame)
        tag = M.HEADER.unpack_from(frame, 0)[2] if len(frame) >= 7 else -1
        with self.cv:
            self.by_tag[tag].append(frame)
            self.cv.notify_all()

    def wait(self, pred, what: str) -> None:
        with self.cv:
            assert self.cv.wait_for(pred, DEADLINE), f"never answered: {what}"


def _submit(sess, d: Draw, frame: bytes, replies: Replies) -> None:
    if d.chance(64):  # the ring worker's way: a Tread's reply written in place
        bufs: list = []

        def alloc(n: int) -> list:
            bufs.append(bytearray(n))
            return [memoryview(bufs[-1])]

        def reply(r) -> None:
            replies.add(bufs[-1][:r] if isinstance(r, int) else r)

        sess.submit(frame, reply, alloc)
    else:
        sess.submit(frame, replies.add)


def one_input(data: bytes) -> None:
    w = world()
    d = Draw(data)
    w.box.reseed_if_changed()
    server = w.server(d.pick(MODELS), pooled=d.chance(48))
    sess = server.session()
    replies = Replies()
    sent: list[tuple[int, int, bool]] = []  # (tag, type, intact)
    msizes = {8192}

    def send(frame: bytes, intact: bool) -> None:
        # What the server answers to: the header's tag, NOTAG for a frame shorter than a header.
        tag, mtype = (M.HEADER.unpack_from(frame, 0)[2], frame[4]) if len(frame) >= 7 else (M.NOTAG, -1)
        sent.append((tag, mtype, intact))
        _submit(sess, d, frame, replies)

    def settle(tag: int) -> None:
        replies.wait(lambda: replies.by_tag.get(tag), f"tag {tag}")

    msize = d.pick((65536 + 24, 8192, 4096 + 24, 0, 7, 100, 1 << 20, 0xFFFFFFFF))
    send(M.encode(M.Tversion(M.NOTAG, msize, d.pick(("9P2000.L", "9P2000.L", "9P2000", "9P2000.u", "")))), True)
    settle(M.NOTAG)
    if not d.chance(16):
        send(M.encode(M.Tattach(1, 0, M.NOFID, "root", "", 0)), True)
        settle(1)
    tags = [M.NOTAG, 1]
    for i in range(d.below(25)):
        tag = 2 + i
        cls, _, frame = draw_message(d, REQUESTS, tag, FIDS, tags)
        intact = not d.chance(20)
        send(frame if intact else mangle(d, frame), intact)
        tags.append(tag)
        if intact and cls is not M.Tflush and cls.TYPE not in PARKED and not d.chance(64):
            settle(tag)  # mostly one at a time, so walks make the fids later requests use
    if d.chance(96):  # Tflush of everything
        for i, old in enumerate(list(tags)):
            send(M.encode(M.Tflush(1000 + i, old)), True)
    try:
        _check(sess, sent, replies, msizes)
    finally:
        sess.close()
    if w.errors.records:
        found, w.errors.records = w.errors.records, []
        raise AssertionError(f"unexpected error in a handler: {found[0]}")
    esc = w.box.escapes()
    assert not esc, f"touched outside the export: {esc}"
    w.inputs += 1
    if w.inputs % 500 == 0:
        _check_outside_and_fds(w)


def _check(sess, sent, replies: Replies, msizes: set[int]) -> None:
    count = collections.Counter(tag for tag, _, _ in sent)
    # Once any Tflush went out, any request may have been flushed before it started (no reply).
    flushing = any(mt == M.Tflush.TYPE for _, mt, _ in sent)
    must = [t for t, mt, intact in sent if count[t] == 1 and intact and mt not in PARKED
            and (not flushing or mt == M.Tflush.TYPE)]
    for t in must:
        replies.wait(lambda t=t: replies.by_tag.get(t), f"tag {t}")
    by_type = {t: mt for t, mt, _ in sent if count[t] == 1}
    with replies.cv:
        got = {t: [M.decode(f) for f in v] for t, v in replies.by_tag.items()}
    # The error reply is the dialect's: Rlerror, or Rerror once some Tversion negotiated 9P2000.u
    # (a mid-session Tversion may switch dialect, so either is fine after that).
    errors = {M.Rlerror.TYPE}
    for msgs in got.values():
        for msg in msgs:
            if isinstance(msg, M.Rversion):
                msizes.add(msg.msize)
                if msg.version == "9P2000.u":
                    errors.add(M.Rerror.TYPE)
    for t, msgs in got.items():
        assert len(msgs) <= count[t], f"tag {t}: {len(msgs)} replies to {count[t]} request(s)"
        for f, msg in zip(replies.by_tag[t], msgs):
            if t in by_type and by_type[t] >= 0:
                assert msg.TYPE == by_type[t] + 1 or msg.TYPE in errors, f"tag {t}: {msg!r} answers type {by_type[t]}"
            if isinstance(msg, (M.Rlerror, M.Rerror)):
                assert 0 < msg.ecode < 4096, f"tag {t}: errno {msg.ecode}"
            if isinstance(msg, M.Rerror):
                assert msg.ename and len(msg.ename.encode()) <= ENAME_MAX, f"tag {t}: ename {msg.ename!r}"
            assert len(f) <= max(msizes), f"tag {t}: reply of {len(f)} bytes above msize {max(msizes)}"


def _check_outside_and_fds(w: _World) -> None:
    changed = w.box.changed_outside()
    assert not changed, f"changed outside the export: {changed}"
    fds = _open_fds()
    if w.fd_base is None:
        w.fd_base = len(fds)
    assert len(fds) <= w.fd_base + 16, f"fd count grew from {w.fd_base} to {len(fds)} across sessions: {fds}"


def _open_fds() -> dict[int, str]:
    """This process's open fds and what each is (a leak's message names it)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # listdir's own fd, closed by now
    return out
