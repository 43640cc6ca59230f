"""The simulated toolstack behind xen9psim: what domain creation, `xl destroy` and a 9pfs attach leave in xenstore.

Also the sim directory, dom0's xenstore client and xen9psim's usage error. Paths come from
xen9p_supervisor.toolstack, the xenstore layout's one home.
"""
from __future__ import annotations

import argparse
import os

from xen9p_common.errors import Xen9pError, XenStoreError
from xen9p_common.platform import Perm, XenStore
from xen9p_supervisor.toolstack import backend_root, domain_path


class UsageError(Xen9pError):
    """A command line that cannot be acted on."""


def sim_dir_from(args: argparse.Namespace) -> str:
    d = args.sim_dir or os.environ.get("XEN9P_SIM_DIR")
    if not d:
        raise UsageError("needs --sim-dir or XEN9P_SIM_DIR")
    return os.path.abspath(d)


def dom0_client(sim_dir: str, timeout: float = 10.0) -> XenStore:
    from xen9p_common.platform.sim import sim_paths
    from xen9p_common.platform.xswire import XsWireClient
    return XsWireClient(sim_paths(sim_dir)["xenstored"], timeout=timeout)


def create_domain(xs: XenStore, domid: int, name: str | None = None) -> None:
    """What domain creation leaves behind: XS_INTRODUCE and libxl's domain nodes.

    libxl makes /local/domain/<domid> and its device/ dir owned by dom0 and readable by the
    guest, so a guest can list its own devices but not create siblings.
    """
    introduced = getattr(xs, "is_domain_introduced", None)
    if introduced is None or not introduced(domid):
        xs.introduce_domain(domid)  # type: ignore[attr-defined]
    dom = domain_path(domid)
    ro = [Perm("n", 0), Perm("r", domid)]

    def tx(t) -> None:
        for path in (dom, dom + "/device"):
            if t.read(path) is None:
                t.mkdir(path)
            t.set_perms(path, ro)
        if t.read(dom + "/name") is None:
            t.write(dom + "/name", name or f"guest{domid}")
            t.write(dom + "/domid", str(domid))

    xs.transaction(tx)


# Device kinds libxl (Xen 4.17) knows: `xl destroy` removes their backend dirs. It does not know
# `xen_9pfs` (written by `xen9pctl attach`), so that dir stays behind for xen9pd to remove (seen
# on real Xen: findings F9).
LIBXL_KINDS = frozenset({"9pfs", "vbd", "vbd3", "qdisk", "vif", "console", "vkbd", "vfb", "pci",
                         "vtpm", "vusb", "qusb", "vdispl", "vsnd", "vinput"})


def destroy_domain(xs: XenStore, domid: int, backend_domid: int = 0) -> None:
    """What `xl destroy` does to xenstore: backends of kinds libxl knows and the domain's nodes go, then RELEASE."""
    try:
        kinds = [k for k in xs.list(domain_path(backend_domid) + "/backend") if k in LIBXL_KINDS]
    except XenStoreError:
        kinds = []
    for path in [f"{backend_root(backend_domid, k)}/{domid}" for k in kinds] + [domain_path(domid)]:
        try:
            xs.rm(path)
        except XenStoreError:
            pass  # never existed or already gone
    try:
        xs.release_domain(domid)  # type: ignore[attr-defined]
    except XenStoreError:
        pass



def attach_device(xs: XenStore, *, domid: int, path: str, tag: str, kind: str = "xen_9pfs",
                  devid: int = 0, security_model: str = "none", limits: dict | None = None,
                  wait: float = 10.0) -> tuple[str, str]:
    """create_domain + libxl's device nodes; waits (like libxl) for the backend to reach InitWait."""
    from xen9p_common.xenbus import XenbusState

    from xen9p_supervisor import toolstack
    create_domain(xs, domid)
    be, fe = toolstack.attach(xs, domid=domid, devid=devid, kind=kind, path=path, tag=tag,
                              security_model=security_model, limits=limits)
    if wait > 0:
        st = toolstack.wait_state(xs, be + "/state",
                                  {XenbusState.InitWait, XenbusState.Connected}, wait)
        if st is None:
            raise Xen9pError(f"dom{domid}/dev{devid}: backend did not reach InitWait within {wait} s "
                             f"(is xen9pd running and serving kind {kind}?)")
    return be, fe
