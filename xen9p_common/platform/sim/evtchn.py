"""Simulated interdomain event channels with Xen's semantics across processes on one machine.

Port state lives in a per-domain table file (the "hypervisor"); a datagram socket per handle is the doorbell.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
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

# PENDING: an event arrived while MASKED. MASKED: delivered and not yet unmasked (the Linux
# evtchn driver masks a port when it queues it). FIRED: queued for pending() of the owner.
F_PENDING = 1
F_MASKED = 2
F_FIRED = 4


def evtchn_dir(sim_dir: str) -> str:
    return os.path.join(sim_dir, "evtchn")


def ports_path(sim_dir: str, domid: int) -> str:
    return os.path.join(evtchn_dir(sim_dir), f"dom{domid}.ports")


def _doorbell_name(sim_key: str, pid: int, nonce: int) -> bytes:
    # Abstract socket: no path-length limit, and the name vanishes when its owner dies,
    # which is how a crashed handle's ports are found and reclaimed.
    return f"\0xen9p-evtchn-{sim_key}-{pid}-{nonce:08x}".encode()


class _Table:
    """One domain's port table, mapped; callers hold its flock while touching entries."""

    def __init__(self, sim_dir: str, domid: int) -> None:
        os.makedirs(evtchn_dir(sim_dir), exist_ok=True)
        size = NR_PORTS * PORT_ENTRY.size
        self.fd = os.open(ports_path(sim_dir, domid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)  # growing is idempotent when two processes race
        self.mem = mmap.mmap(self.fd, size, mmap.MAP_SHARED)

    def get(self, port: int) -> list[int]:
        return list(PORT_ENTRY.unpack_from(self.mem, port * PORT_ENTRY.size))

    def put(self, port: int, entry: list[int]) -> None:
        PORT_ENTRY.pack_into(self.mem, port * PORT_ENTRY.size, *entry)

    def close(self) -> None:
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

    @staticmethod
    def _raise_event(table: _Table, port: int) -> tuple[int, int] | None:
        """Set the event on `port`; returns the owner to wake, or None if it stays masked."""
        entry = table.get(port)
        if entry[1] & F_MASKED:
            entry[1] |= F_PENDING
            table.put(port, entry)
            return None
        entry[1] |= F_MASKED | F_FIRED
        table.put(port, entry)
        return entry[5], entry[6]

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
            table.put(port, [ECS_UNBOUND, 0, 0, remote_domid, 0, self._pid, self._nonce])
            self._ports.add(port)
            return port

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> int:
        if not 0 < remote_port < NR_PORTS:
            raise platform_error(errno.EINVAL, f"dom{remote_domid} has no port {remote_port}")
        with self._mutex:
            wake = None
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
                        local.put(port, [ECS_INTERDOMAIN, 0, 0, remote_domid, remote_port,
                                         self._pid, self._nonce])
                        r[0], r[3], r[4] = ECS_INTERDOMAIN, self.domid, port
                        remote.put(remote_port, r)
                        # Xen sets the new local port pending: events sent to the unbound
                        # remote port before this bind would otherwise be lost.
                        wake = self._raise_event(local, port)
                        self._ports.add(port)
                        break
                # A crashed worker of ours still holds the remote port: close it, retry once.
                self._close_port(*stale)
            else:
                raise platform_error(errno.EBUSY, f"dom{remote_domid} port {remote_port} stays bound")
        if wake:
            self._ring(*wake)
        return port

    def fileno(self) -> int:
        return self._sock.fileno()

    def pending(self) -> list[int]:
        with self._mutex:
            # Drain doorbells before scanning: a notify after the scan rings again.
            while True:
                try:
                    self._sock.recv(64)
                except BlockingIOError:
                    break
            fired = []
            with self._locked(self.domid):
                table = self._tables[self.domid]
                for port in sorted(self._ports):
                    entry = table.get(port)
                    if entry[1] & F_FIRED and self._is_mine(entry):
                        entry[1] &= ~F_FIRED
                        table.put(port, entry)
                        fired.append(port)
            return fired

    def unmask(self, port: int) -> None:
        if port not in self._ports:
            return  # like the Linux driver, unmasking a foreign port is ignored
        with self._mutex:
            with self._locked(self.domid):
                table = self._tables[self.domid]
                entry = table.get(port)
                if not self._is_mine(entry):
                    return
                entry[1] &= ~F_MASKED
                wake = False
                if entry[1] & F_PENDING:
                    # An event arrived while masked: deliver it now, exactly once.
                    entry[1] = (entry[1] & ~F_PENDING) | F_MASKED | F_FIRED
                    wake = True
                table.put(port, entry)
            if wake:
                self._ring(self._pid, self._nonce)

    def notify(self, port: int) -> None:
        with self._mutex:
            self._check_port(port)
            wake = None
            while True:
                peer = self._peer_domid(port)
                with self._locked(self.domid, peer):
                    entry = self._tables[self.domid].get(port)
                    if entry[0] != ECS_INTERDOMAIN:
                        return  # Xen drops a send on an unbound port silently
                    if entry[3] != peer:
                        continue
                    remote = self._tables[peer]
                    r = remote.get(entry[4])
                    if r[0] == ECS_INTERDOMAIN and r[3] == self.domid and r[4] == port:
                        wake = self._raise_event(remote, entry[4])
                    break
        if wake:
            self._ring(*wake)

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
