"""A xenstore connection that survives xenstored restarting: xen9pd serves on and reconnects with backoff.

Ring workers need no xenstore (grants, event channels and the ring are the whole data path), so a
lost connection must not cost a guest anything. ReconnectingXenStore wraps the platform's client:
when a call finds the connection gone it logs once, drops the client and answers every later call
with ENOTCONN (a XenStoreError, which every caller already handles as "xenstore unavailable") until
reconnect_if_due() gets a new one, re-arms every watch it was asked for and tells the loop to rescan.

event_fd() stays the same number for the daemon's poller across reconnects: it is a dup of the
current client's event fd, or of a pipe nobody writes while disconnected (a dead client's fd would
stay readable and spin the loop).
"""
from __future__ import annotations

import errno
import logging
import os
import time
from typing import Callable, Sequence

from xen9p_common.errors import XenStoreError
from xen9p_common.platform import Perm, WatchEvent, XenStore

log = logging.getLogger("xen9pd")

# What a dead connection looks like from a call (ENOTCONN: ours, while disconnected).
LOST = frozenset((errno.ECONNRESET, errno.EPIPE, errno.EBADF, errno.ENOTCONN, errno.ECONNREFUSED,
                  errno.ECONNABORTED))
RETRY_INITIAL, RETRY_MAX = 0.1, 5.0  # seconds between reconnect attempts: doubling, capped


class ReconnectingXenStore(XenStore):
    def __init__(self, connect: Callable[[], XenStore], *, clock: Callable[[], float] = time.monotonic,
                 retry_initial: float = RETRY_INITIAL, retry_max: float = RETRY_MAX) -> None:
        self._connect = connect
        self._clock = clock
        self.retry_initial, self.retry_max = retry_initial, retry_max
        self._inner: XenStore | None = connect()  # the first connection's failure is the caller's (exit 69)
        self._kind = type(self._inner)
        self._watches: dict[tuple[str, str], None] = {}  # insertion-ordered: re-armed in the order made
        self._idle_r, self._idle_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._event_fd = os.dup(self._inner.event_fd())
        os.set_inheritable(self._event_fd, False)
        self.lost_at: float | None = None
        self.lost_total = 0
        self._attempts = 0
        self._delay = retry_initial
        self._next_try = 0.0

    # -- connection state ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._inner is not None

    def next_deadline(self) -> float | None:
        """When the loop must wake for the next reconnect attempt (None while connected)."""
        return None if self._inner is not None else self._next_try

    def _lose(self, e: XenStoreError) -> None:
        if self._inner is None:
            return
        log.error("lost the xenstore connection (%s): ring workers serve on; reconnecting", e)
        inner, self._inner = self._inner, None
        os.dup2(self._idle_r, self._event_fd, inheritable=False)
        _close_quietly(inner)
        self.lost_at = self._clock()
        self.lost_total += 1
        self._attempts = 0
        self._delay = self.retry_initial
        self._next_try = self.lost_at

    def reconnect_if_due(self) -> bool:
        """Try to reconnect if disconnected and the backoff has passed. True once reconnected (rescan now)."""
        now = self._clock()
        if self._inner is not None or now < self._next_try:
            return False
        self._attempts += 1
        try:
            inner = self._connect()
        except (XenStoreError, OSError) as e:
            self._retry_later(now, e)
            return False
        try:
            for path, token in self._watches:
                inner.watch(path, token)
        except (XenStoreError, OSError) as e:
            _close_quietly(inner)
            self._retry_later(now, e)
            return False
        os.dup2(inner.event_fd(), self._event_fd, inheritable=False)
        self._inner = inner
        log.warning("xenstore connection back after %.1f s (%d attempt(s)): %d watch(es) re-armed; rescanning",
                    now - (self.lost_at or now), self._attempts, len(self._watches))
        return True

    def _retry_later(self, now: float, e: Exception) -> None:
        if self._attempts == 1:
            log.warning("xenstore still unavailable (%s); retrying with backoff up to %.0f s", e, self.retry_max)
        else:
            log.debug("xenstore reconnect attempt %d failed: %s", self._attempts, e)
        self._next_try = now + self._delay
        self._delay = min(self._delay * 2, self.retry_max)

    def _call(self, name: str, *args, **kw):
        inner = self._inner
        if inner is None:
            raise XenStoreError(errno.ENOTCONN, "xenstore connection lost; reconnecting")
        try:
            return getattr(inner, name)(*args, **kw)
        except XenStoreError as e:
            if e.errno in LOST:
                self._lose(e)
            raise

    # -- XenStore ------------------------------------------------------------------------

    def read(self, path: str) -> str | None:
        return self._call("read", path)

    def write(self, path: str, value: str) -> None:
        self._call("write", path, value)

    def mkdir(self, path: str) -> None:
        self._call("mkdir", path)

    def rm(self, path: str) -> None:
        self._call("rm", path)

    def list(self, path: str) -> list[str]:
        return self._call("list", path)

    def get_perms(self, path: str) -> list[Perm]:
        return self._call("get_perms", path)

    def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        self._call("set_perms", path, perms)

    def transaction(self, fn, retries: int = 16):
        return self._call("transaction", fn, retries)

    def watch(self, path: str, token: str) -> None:
        self._watches[(path, token)] = None  # kept even if this call fails: re-armed on reconnect
        self._call("watch", path, token)

    def unwatch(self, path: str, token: str) -> None:
        self._watches.pop((path, token), None)
        if self._inner is not None:
            self._call("unwatch", path, token)

    def wait_event(self, timeout: float) -> WatchEvent | None:
        if self._inner is None:
            return None
        return self._call("wait_event", timeout)

    def event_fd(self) -> int:
        return self._event_fd

    def close(self) -> None:
        if self._inner is not None:
            _close_quietly(self._inner)
            self._inner = None
        for fd in (self._event_fd, self._idle_r, self._idle_w):
            os.close(fd)

    def __getattr__(self, name: str):
        # The platform client's extras (is_domain_introduced, introduce_domain, ...), when it has them.
        if name.startswith("_") or not callable(getattr(self._kind, name, None)):
            raise AttributeError(name)
        return lambda *args, **kw: self._call(name, *args, **kw)


def _close_quietly(xs: XenStore) -> None:
    try:
        xs.close()
    except (XenStoreError, OSError):
        pass
