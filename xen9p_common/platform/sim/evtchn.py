"""Simulated interdomain event channels with Xen's semantics across processes on one machine.

Port bindings live in a per-domain table file (the "hypervisor"), events in per-port counters; a datagram socket per handle is the doorbell.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import mmap
import os
import secrets
import socket
import struct
import threading
from typing import Iterator

from .. import EventChannels
from .grants import platform_error

NR_PORTS = 1024  # port 0 is never allocated, as in Xen

# One port: state, flags, peer (domid, port) or the domid allowed to bind, owning handle.
PORT_ENTRY = struct.Struct("<BBHIIII")
ECS_FREE = 0
ECS_UNBOUND = 1
ECS_INTERDOMAIN = 2

# Events travel without the table lock, through three u32 words per port after the table:
# SENT counts events raised (written only by the peer port's handle, the one notifier),
# SEEN is the SENT value the owner last delivered and MASKED is set from delivery until
# unmask (both written only by the owner). An event is pending while SENT != SEEN.
# A notifier stores SENT, then (after a full fence) loads MASKED; unmask stores MASKED,
# then (after a fence) loads SENT: one of the two always sees the other, so an event
# raised while masked is delivered at unmask (Dekker). The doorbell datagram is sent only
# when the port is unmasked and no earlier event is still undelivered (that one's wakeup
# is already on its way), so a busy peer costs no syscall per notify.
EV_WORDS = 4  # per port: sent, seen, masked, unused
EV_SENT, EV_SEEN, EV_MASKED = 0, 1, 2
_M32 = 0xFFFFFFFF
_fence_lock = threading.Lock()


def _fence() -> None:
    # Taking a lock is a locked read-modify-write: a full barrier on x86, ordering the
    # SENT/MASKED store before the load that follows it (in any process's view of the page).
    _fence_lock.acquire()
    _fence_lock.release()


def evtchn_dir(sim_dir: str) -> str:
    return os.path.join(sim_dir, "evtchn")


def ports_path(sim_dir: str, domid: int) -> str:
    return os.path.join(evtchn_dir(sim_dir), f"dom{domid}.ports")


@functools.lru_cache(maxsize=256)  # formatted on every notify otherwise
def _doorbell_name(sim_key: str, pid: int, nonce: int) -> bytes:
    # Abstract socket: no path-length limit, and the name vanishes when its owner dies,
    # which is how a crashed handle's ports are found and reclaimed.
    return f"\0xen9p-evtchn-{sim_key}-{pid}-{nonce:08x}".encode()


_EV_OFF = NR_PORTS * PORT_ENTRY.size  # the event words follow the port table


class _Table:
    """One domain's port table and event words, mapped; callers hold its flock while touching entries."""

    def __init__(self, sim_dir: str, domid: int) -> None:
        os.makedirs(evtchn_dir(sim_dir), exist_ok=True)
        size = _EV_OFF + NR_PORTS * EV_WORDS * 4
        self.fd = os.open(ports_path(sim_dir, domid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)  # growing is idempotent when two processes race
        self.mem = mmap.mmap(self.fd, size, mmap.MAP_SHARED)
        # Native u32 items: each load/store is one aligned 4-byte access (never torn).
        self.ev = memoryview(self.mem)[_EV_OFF:].cast("I")

    def get(self, port: int) -> list[int]:
        return list(PORT_ENTRY.unpack_from(self.mem, port * PORT_ENTRY.size))

    def peek(self, port: int) -> tuple:
        """The entry read without the lock (notify's routing: a race with a close is benign)."""
        return PORT_ENTRY.unpack_from(self.mem, port * PORT_ENTRY.size)

    def put(self, port: int, entry: list[int]) -> None:
        PORT_ENTRY.pack_into(self.mem, port * PORT_ENTRY.size, *entry)

    def clear_events(self, port: int, pending: bool) -> None:
        """A port being (re)bound: forget old events; `pending` raises one (owner only)."""
        ev, base = self.ev, port * EV_WORDS
        ev[base + EV_MASKED] = 0
        ev[base + EV_SEEN] = (ev[base + EV_SENT] - pending) & _M32

    def close(self) -> None:
        self.ev.release()
        self.mem.close()
        os.close(self.fd)


def _free_entry() -> list[int]:
    return [ECS_FREE, 0, 0, 0, 0, 0, 0]


class SimEventChannels(EventChannels):
    """One handle of domain `domid` (guest or backend side), like one open of /dev/xen/evtchn."""

    def __init__(self, sim_dir: str, domid: int = 0) -> None:
        self.sim_dir = sim_dir
        self.domid = domid
        self._key = hashlib.sha1(os.path.realpath(sim_dir).encode()).hexdigest()[:12]
        self._pid = os.getpid()
        self._nonce = secrets.randbits(32)
        self._mutex = threading.Lock()
        self._tables: dict[int, _Table] = {}
        self._ports: set[int] = set()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._sock.bind(_doorbell_name(self._key, self._pid, self._nonce))
        self._table(domid)
        self._reclaim_dead_owners()

    # -- plumbing ------------------------------------------------------------------
    def _table(self, domid: int) -> _Table:
        table = self._tables.get(domid)
        if table is None:
            table = self._tables[domid] = _Table(self.sim_dir, domid)
        return table

    @contextlib.contextmanager
    def _locked(self, *domids: int) -> Iterator[None]:
        # Always lock in domid order, so two handles locking the same pair cannot deadlock.
        order = sorted(set(domids))
        taken = []
        try:
            for d in order:
                fcntl.flock(self._table(d).fd, fcntl.LOCK_EX)
                taken.append(d)
            yield
        finally:
            for d in reversed(taken):
                fcntl.flock(self._tables[d].fd, fcntl.LOCK_UN)

    def _is_mine(self, entry: list[int]) -> bool:
        return entry[5] == self._pid and entry[6] == self._nonce

    def _alive(self, pid: int, nonce: int) -> bool:
        if pid == self._pid and nonce == self._nonce:
            return True
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            probe.connect(_doorbell_name(self._key, pid, nonce))
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def _ring(self, pid: int, nonce: int) -> None:
        try:
            self._sock.sendto(b"\x01", socket.MSG_DONTWAIT, _doorbell_name(self._key, pid, nonce))
        except BlockingIOError:
            pass  # the owner's queue is full, so it is going to wake up anyway
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # the owner is gone; its ports get reclaimed

    def _alloc_port(self, table: _Table) -> int:
        for port in range(1, NR_PORTS):
            if table.get(port)[0] == ECS_FREE:
                return port
        raise platform_error(errno.ENOSPC, f"dom{self.domid} has no free event channel")

    def _check_port(self, port: int) -> None:
        if port not in self._ports:
            raise platform_error(errno.ENOTCONN, f"port {port} is not bound by this handle")

    def _peer_domid(self, port: int) -> int:
        entry = self._tables[self.domid].get(port)
        return entry[3] if entry[0] == ECS_INTERDOMAIN else self.domid

    def _close_port(self, port: int, owner: tuple[int, int] | None = None) -> None:
        """Xen's evtchn_close: free the port, revert an interdomain peer to unbound for us."""
        while True:
            peer = self._peer_domid(port)
            with self._locked(self.domid, peer):
                local = self._tables[self.domid]
                entry = local.get(port)
                if owner is not None and (entry[5], entry[6]) != owner:
                    return  # someone else reclaimed or reused it meanwhile
                if entry[0] == ECS_INTERDOMAIN and entry[3] != peer:
                    continue  # peer changed under us: relock
                if entry[0] == ECS_INTERDOMAIN:
                    remote = self._tables[peer]
                    r = remote.get(entry[4])
                    if r[0] == ECS_INTERDOMAIN and r[3] == self.domid and r[4] == port:
                        r[0], r[4] = ECS_UNBOUND, 0
                        remote.put(entry[4], r)
                local.put(port, _free_entry())
                return

    def _reclaim_dead_owners(self) -> None:
        """What the kernel does when a process holding /dev/xen/evtchn dies: close its ports."""
        table = self._tables[self.domid]
        with self._locked(self.domid):
            used = [(p, table.get(p)) for p in range(1, NR_PORTS)]
        for port, entry in used:
            if entry[0] != ECS_FREE and not self._alive(entry[5], entry[6]):
                self._close_port(port, (entry[5], entry[6]))

    # -- EventChannels -------------------------------------------------------------
    def alloc_unbound(self, remote_domid: int) -> int:
        """A fresh port that `remote_domid` may bind to (what a frontend does)."""
        with self._mutex, self._locked(self.domid):
            table = self._tables[self.domid]
            port = self._alloc_port(table)
            table.clear_events(port, pending=False)
            table.put(port, [ECS_UNBOUND, 0, 0, remote_domid, 0, self._pid, self._nonce])
            self._ports.add(port)
            return port

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> int:
        if not 0 < remote_port < NR_PORTS:
            raise platform_error(errno.EINVAL, f"dom{remote_domid} has no port {remote_port}")
        with self._mutex:
            for _attempt in range(2):
                with self._locked(self.domid, remote_domid):
                    local, remote = self._tables[self.domid], self._tables[remote_domid]
                    r = remote.get(remote_port)
                    stale = None
                    if r[0] == ECS_INTERDOMAIN and r[3] == self.domid:
                        mine = local.get(r[4])
                        if not self._alive(mine[5], mine[6]):
                            stale = (r[4], (mine[5], mine[6]))
                    if stale is None:
                        if r[0] != ECS_UNBOUND or r[3] != self.domid:
                            raise platform_error(
                                errno.EINVAL, f"dom{remote_domid} port {remote_port} is not "
                                              f"unbound for dom{self.domid}")
                        port = self._alloc_port(local)
                        # Xen sets the new local port pending: events sent to the unbound
                        # remote port before this bind would otherwise be lost.
                        local.clear_events(port, pending=True)
                        local.put(port, [ECS_INTERDOMAIN, 0, 0, remote_domid, remote_port,
                                         self._pid, self._nonce])
                        r[0], r[3], r[4] = ECS_INTERDOMAIN, self.domid, port
                        remote.put(remote_port, r)
                        self._ports.add(port)
                        break
                # A crashed worker of ours still holds the remote port: close it, retry once.
                self._close_port(*stale)
            else:
                raise platform_error(errno.EBUSY, f"dom{remote_domid} port {remote_port} stays bound")
        self._ring(self._pid, self._nonce)
        return port

    def fileno(self) -> int:
        return self._sock.fileno()

    def pending(self) -> list[int]:
        with self._mutex:
            # Take one doorbell before scanning: a notify after the scan rings again, and any
            # other doorbell still queued only makes the next poll return at once (one recv a
            # wakeup, not a drain to EAGAIN: the common case is exactly one).
            try:
                self._sock.recv(64)
            except BlockingIOError:
                pass
            fired = []
            ev = self._tables[self.domid].ev
            for port in sorted(self._ports):
                base = port * EV_WORDS
                if ev[base + EV_MASKED]:
                    continue  # delivered and not unmasked: events wait for unmask
                sent = ev[base + EV_SENT]
                if sent != ev[base + EV_SEEN]:
                    ev[base + EV_SEEN] = sent
                    ev[base + EV_MASKED] = 1
                    fired.append(port)
            return fired

    def unmask(self, port: int) -> None:
        if port not in self._ports:
            return  # like the Linux driver, unmasking a foreign port is ignored
        with self._mutex:
            ev = self._tables[self.domid].ev
            base = port * EV_WORDS
            if not ev[base + EV_MASKED]:
                return
            ev[base + EV_MASKED] = 0
            _fence()
            if ev[base + EV_SENT] == ev[base + EV_SEEN]:
                return
        # An event arrived while masked: deliver it now, exactly once (pending() takes it).
        self._ring(self._pid, self._nonce)

    def notify(self, port: int) -> None:
        with self._mutex:
            self._check_port(port)
            entry = self._tables[self.domid].peek(port)
            if entry[0] != ECS_INTERDOMAIN:
                return  # Xen drops a send on an unbound port silently
            peer, pport = entry[3], entry[4]
            remote = self._table(peer)
            r = remote.peek(pport)
            if r[0] != ECS_INTERDOMAIN or r[3] != self.domid or r[4] != port:
                return  # the peer closed its end meanwhile
            ev, base = remote.ev, pport * EV_WORDS
            old = ev[base + EV_SENT]
            ev[base + EV_SENT] = (old + 1) & _M32
            _fence()
            if ev[base + EV_MASKED] or old != ev[base + EV_SEEN]:
                return  # masked (unmask delivers it) or an earlier event's wakeup is on its way
        self._ring(r[5], r[6])

    def unbind(self, port: int) -> None:
        with self._mutex:
            self._check_port(port)
            self._close_port(port, (self._pid, self._nonce))
            self._ports.discard(port)

    def close(self) -> None:
        with self._mutex:
            if self._sock.fileno() < 0:
                return
            for port in sorted(self._ports):
                self._close_port(port, (self._pid, self._nonce))
            self._ports.clear()
            self._sock.close()
            for table in self._tables.values():
                table.close()
            self._tables.clear()
