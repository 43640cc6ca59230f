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


def hold_libxl_node(xs: XenStore, self_domid: int) -> None:
    """Write state=running and our pid; StartupError if a live daemon already holds the node."""
    base = LIBXL_NODE.format(self=self_domid)

    def tx(t: Transaction) -> None:
        if t.read(base + "/state") is not None:
            pid = (t.read(base + "/pid") or "").strip()
            if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
                raise StartupError(f"{base}/state is held by a running daemon (pid {pid}); "
                                   f"stop it (xen-9pfsd or another xen9pd) first")
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


