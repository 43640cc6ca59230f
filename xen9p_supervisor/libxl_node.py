"""The xenstore node through which libxl learns that a xen-9pfsd is running (so xl does not start one).

xen9pd holds it like xen-9pfsd does: state "running" + pid, written in a transaction, removed on exit.
"""
from __future__ import annotations

import logging
import os

from xen9p_common.errors import Xen9pError, XenStoreError
from xen9p_common.platform import Transaction, XenStore
from xen9p_common.procs import pid_alive

log = logging.getLogger("xen9pd")

LIBXL_NODE = "/local/domain/{self}/libxl/xen-9pfs"


class StartupError(Xen9pError):
    """xen9pd cannot start (xenstore unreachable, another daemon holds the node); exit 69."""


PEER_COMM = "xen-9pfsd"


def running_peers(proc: str = "/proc") -> list[int]:
    """Pids of running xen-9pfsd processes (by their command name)."""
    out = []
    for name in os.listdir(proc):
        if name.isdigit():
            try:
                with open(f"{proc}/{name}/comm") as f:
                    if f.read().strip() == PEER_COMM:
                        out.append(int(name))
            except OSError:
                continue  # gone meanwhile
    return out


def hold_libxl_node(xs: XenStore, self_domid: int, peers=running_peers) -> None:
    """Write state=running and our pid; StartupError if a live daemon already holds the node.

    The holder is the pid in the node when that process lives. libxl writes the pid of the
    xen-9pfsd it spawns, but a xen-9pfsd started otherwise writes only state: a node without a
    live pid is still held while a xen-9pfsd process runs (two backends must never serve one
    device), and is stale (taken over) otherwise.
    """
    base = LIBXL_NODE.format(self=self_domid)

    def tx(t: Transaction) -> None:
        if t.read(base + "/state") is not None:
            pid = (t.read(base + "/pid") or "").strip()
            if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
                raise StartupError(f"{base}/state is held by a running daemon (pid {pid}); "
                                   f"stop it (xen-9pfsd or another xen9pd) first")
            live = peers()
            if live:
                raise StartupError(f"{base}/state is held by a running daemon ({PEER_COMM} pid "
                                   f"{', '.join(map(str, live))}; the node names {('pid ' + pid) if pid else 'no pid'}); "
                                   f"stop it first")
        t.write(base + "/state", "running")
        t.write(base + "/pid", str(os.getpid()))

    xs.transaction(tx)
    log.info("holding %s/state = running for libxl", base)


def release_libxl_node(xs: XenStore, self_domid: int) -> None:
    """Remove the node if it still names our pid; a xenstore error is only logged."""
    base = LIBXL_NODE.format(self=self_domid)
    try:
        def tx(t: Transaction) -> None:
            if (t.read(base + "/pid") or "").strip() == str(os.getpid()):
                t.rm(base)
        xs.transaction(tx)
    except XenStoreError as e:
        log.warning("cannot remove %s: %s", base, e)


