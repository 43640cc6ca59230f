"""A simulated 9pfs frontend that behaves like Unikraft's Xen 9pfront, and the 9P habits of its 9P2000.L client.

Up to two rings of order min(6, backend max) (order 0 is an assertion failure: the guest dies), backend `versions`
exactly "1", everything in one xenbus transaction; msize is the whole one-direction ring, so a reply may fill the
in-ring; replies are read as soon as their header shows, so the transport breaks on one published in pieces.
"""
from __future__ import annotations

from xen9p_sim.client import Client, Fid
from xen9p_common.p9 import constants as c
from xen9p_common.p9 import messages as m
from xen9p_common.ring import ring_size
from xen9p_sim.frontend.linux import SimFrontend
from xen9p_sim.frontend.ring import FrontendError
from xen9p_sim.frontend.transport import RingTransport

UNIKRAFT_MAX_RINGS = 2
UNIKRAFT_MAX_RING_ORDER = 6
N_UNAME_NONE = 0xFFFFFFFF  # ~0: no numeric user


class UnikraftFrontend(SimFrontend):
    INITIALISED_IN_TX = True
    WHOLE_REPLIES_ONLY = True

    def __init__(self, sim_dir: str, domid: int, tag: str | None = None, devid: int | None = None,
                 **kw) -> None:
        kw.setdefault("num_rings", UNIKRAFT_MAX_RINGS)
        super().__init__(sim_dir, domid, tag, devid, **kw)

    def _read_features(self) -> tuple[int, int]:
        versions = self.xs.read(f"{self.backend}/versions")
        if versions != "1":
            raise FrontendError(f"{self.name}: backend versions {versions!r}: Unikraft wants exactly '1'")
        rings = min(self.num_rings, self._feature("max-rings"))
        if rings < 1:
            raise FrontendError(f"{self.name}: backend offers no ring")
        order = min(self._feature("max-ring-page-order"), UNIKRAFT_MAX_RING_ORDER)
        if order == 0:
            raise FrontendError(f"{self.name}: ring order 0: Unikraft's assertion fails and the guest crashes")
        return rings, order

    def _maxsize(self, order: int) -> int:
        return ring_size(order)  # the whole one-direction ring, not half as Linux

    def reconnect(self) -> RingTransport:
        raise FrontendError(f"{self.name}: Unikraft's 9pfront does not reconnect")


def unikraft_mount(fe: UnikraftFrontend, *, timeout: float = 30.0) -> tuple[Client, Fid]:
    """Handshake, Tversion "9P2000.L" on NOTAG with msize = the whole ring, Tattach afid NOFID uname "" n_uname ~0."""
    transport = fe.connect()
    client = Client(transport, timeout=timeout, name=f"9p-{fe.name}")
    try:
        r = client.version(transport.maxsize, c.VERSION_9P2000L)
        if r.version != c.VERSION_9P2000L:
            raise FrontendError(f"{fe.name}: Rversion {r.version!r}: the mount fails (EIO)")
        return client, client.attach("", "", N_UNAME_NONE)
    except BaseException:
        client.close()
        raise


def uk_mkdir(d: Fid, name: str, mode: int = 0o755) -> m.Qid:
    """mkdir as Unikraft does it in a .L session: the legacy Tcreate with DMDIR on a clone of the directory."""
    f = d.create_u(name, c.DMDIR | (mode & 0o777), c.OREAD)
    f.clunk()
    return f.qid


def uk_remove(d: Fid, name: str) -> None:
    """rm / rmdir as Unikraft does it: walk to the entry and Tremove it (the fid is gone either way)."""
    d.walk([name]).remove()
