"""The Mini-OS-like and Unikraft-like simulated frontends against the tiny in-test backend: their xenbus habits,
their ring choices and the checks they make of a backend (test_sim_frontend.py has the backend and the fixture).
"""
from __future__ import annotations

import errno
import struct

import pytest

from tests.integration.test_sim_frontend import backend, sim  # noqa: F401 - the fixtures
from tests.integration.test_sim_frontend import DOMID, StandInServer
from xen9p_sim.client import P9Error
from xen9p_common.p9 import messages as m
from xen9p_sim.frontend.linux import FrontendError, SimFrontend, domain_socket
from xen9p_sim.frontend.minios import MiniOSFrontend
from xen9p_sim.frontend.unikraft import UnikraftFrontend
from xen9p_sim.frontend.minios_session import MiniOSSession
from xen9p_common.platform.xswire import XsWireClient
from xen9p_common.ring import IntfLayout, ring_size
from xen9p_common.xenbus import XenbusState
from xen9p_supervisor import toolstack

FE_DIR = toolstack.frontend_path(DOMID, 0)
BE_DIR = toolstack.backend_path(0, "xen_9pfs", DOMID, 0)


class RecordingXenStore:
    """The guest's xenstore connection, recording every write and which transaction it was in."""

    def __init__(self, inner: XsWireClient) -> None:
        self.inner = inner
        self.plain: list[tuple[str, str]] = []
        self.transactions: list[list[tuple[str, str]]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def write(self, path: str, value: str) -> None:
        self.plain.append((path, value))
        self.inner.write(path, value)

    def transaction(self, body):
        outer = self

        def recording(t):
            writes: list[tuple[str, str]] = []

            class T:
                def __getattr__(self, name):
                    return getattr(t, name)

                def write(self, path, value):
                    writes.append((path, value))
                    t.write(path, value)
            r = body(T())
            outer.transactions.append(writes)
            return r
        return self.inner.transaction(recording)


@pytest.fixture
def recording(sim):
    xs = RecordingXenStore(XsWireClient(domain_socket(sim[0], DOMID), timeout=10))
    yield xs
    xs.inner.close()


def _ring_tx(xs: RecordingXenStore) -> dict[str, str]:
    txs = [dict(w) for w in xs.transactions if f"{FE_DIR}/ring-ref0" in dict(w)]
    assert len(txs) == 1, xs.transactions
    return txs[0]


# -- Mini-OS ----------------------------------------------------------------------------

def test_minios_writes_ring_nodes_and_initialised_in_one_transaction(sim, backend, recording):
    d, _, _ = sim
    backend()
    with MiniOSFrontend(d, DOMID, "share", xenstore=recording) as fe:
        tr = fe.connect()
        tx = _ring_tx(recording)
        assert {k.rpartition("/")[2]: v for k, v in tx.items()} == {
            "version": "1", "num-rings": "1", "ring-ref0": str(fe.rings[0].intf_ref),
            "event-channel-0": str(fe.rings[0].port), "state": str(int(XenbusState.Initialised))}
        assert (f"{FE_DIR}/state", "3") not in recording.plain  # never on its own
        assert recording.plain[-1] == (f"{FE_DIR}/state", "4")
        assert fe.order == 4 and len(tr.rings) == 1
        assert tr.maxsize == ring_size(4) // 2 == 16 * 1024


def test_linux_like_frontend_still_switches_to_initialised_on_its_own(sim, backend, recording):
    d, _, _ = sim
    backend()
    with SimFrontend(d, DOMID, "share", xenstore=recording) as fe:
        fe.connect()
        assert f"{FE_DIR}/state" not in _ring_tx(recording)
        assert (f"{FE_DIR}/state", "3") in recording.plain


def test_minios_refuses_a_backend_that_goes_straight_to_closed(sim, backend):
    """The in-test backend answers Closing with Closed at once: Mini-OS's 9pfront would fail its shutdown."""
    d, _, dom0 = sim
    backend()
    with MiniOSFrontend(d, DOMID, "share") as fe:
        fe.connect()
        with pytest.raises(FrontendError, match=r"went Closed while waiting for \['Closing'\]: Mini-OS's shutdown"):
            fe.disconnect()
        assert fe.closing_answer is XenbusState.Closed
        assert dom0.read(FE_DIR + "/state") == str(int(XenbusState.Closed))
        assert fe.rings == []


def test_minios_needs_exactly_initwait(sim):
    """Past InitWait without ever being there (a backend already Connected): 9pfront gives up at once."""
    d, _, dom0 = sim
    for k, v in (("versions", "1"), ("max-rings", "1"), ("max-ring-page-order", "4"), ("state", "4")):
        dom0.write(f"{BE_DIR}/{k}", v)
    with MiniOSFrontend(d, DOMID, "share", timeout=5) as fe:
        with pytest.raises(FrontendError, match="backend went Connected while waiting for"):
            fe.connect()


def test_minios_accepts_a_versions_list_naming_1_and_does_not_reconnect(sim, backend):
    d, _, _ = sim
    backend(versions="1,2", max_rings=1, max_order=2)
    with MiniOSFrontend(d, DOMID, "share") as fe:
        tr = fe.connect()
        assert fe.order == 2 and tr.maxsize == ring_size(2) // 2
        with pytest.raises(FrontendError, match="does not reconnect"):
            fe.reconnect()


def test_minios_session_insists_on_9p2000u_and_on_t_plus_1_or_rerror(sim, backend):
    """The stand-in server speaks .L: its Rversion is ENOMSG to 9pfront, and its Rlerror is 'wrong return type'."""
    d, _, _ = sim
    be = backend(server=StandInServer(512 * 1024))
    with MiniOSFrontend(d, DOMID, "share") as fe:
        s = MiniOSSession(fe.connect(), timeout=10)
        try:
            with pytest.raises(FrontendError, match="9pfs connect failed.*ENOMSG"):
                s.version(16 * 1024)
            with pytest.raises(P9Error) as ei:
                s.call(m.Tstat, 0)  # the stand-in answers Rlerror(EOPNOTSUPP)
            assert ei.value.errno == errno.EDOM
            assert be.server.seen and all(tag < 64 for _, tag in be.server.seen)  # ordinary tags only
        finally:
            s.close()


def test_minios_live_update_keeps_ring_port_and_indexes(sim, backend):
    d, _, dom0 = sim
    backend()
    with MiniOSFrontend(d, DOMID, "share") as fe:
        tr = fe.connect()
        s = MiniOSSession(tr, timeout=10)
        s.call(m.Tclunk, 5)  # the stand-in answers: indexes move
        ring = fe.rings[0]
        before = (ring.intf_ref, ring.port, ring.fr.out_prod, ring.fr.in_cons)
        assert before[2] > 0
        s.close()
        tr2 = fe.live_update()
        assert tr2 is not tr and fe.rings[0] is ring
        assert (ring.intf_ref, ring.port, ring.fr.out_prod, ring.fr.in_cons) == before
        s2 = MiniOSSession(tr2, timeout=10)
        s2.call(m.Tclunk, 5)  # the same ring goes on carrying requests
        assert ring.fr.out_prod > before[2]
        s2.close()
        assert dom0.read(FE_DIR + "/state") == "4" and fe.live_updates == 1


# -- Unikraft ---------------------------------------------------------------------------

def test_unikraft_picks_two_rings_of_order_6_and_the_whole_ring_as_maxsize(sim, backend, recording):
    d, _, _ = sim
    backend(max_rings=4, max_order=9)
    with UnikraftFrontend(d, DOMID, "share", xenstore=recording) as fe:
        tr = fe.connect()
        assert len(tr.rings) == 2 and fe.order == 6
        assert tr.maxsize == ring_size(6) == 128 * 1024
        tx = _ring_tx(recording)
        assert tx[f"{FE_DIR}/num-rings"] == "2" and tx[f"{FE_DIR}/state"] == "3"
        assert f"{FE_DIR}/ring-ref1" in tx and f"{FE_DIR}/event-channel-1" in tx


def test_unikraft_takes_one_ring_if_that_is_all(sim, backend):
    d, _, _ = sim
    backend(max_rings=1, max_order=3)
    with UnikraftFrontend(d, DOMID, "share") as fe:
        tr = fe.connect()
        assert len(tr.rings) == 1 and fe.order == 3 and tr.maxsize == ring_size(3)


@pytest.mark.parametrize("kw,why", [
    (dict(max_order=0), "ring order 0: Unikraft's assertion fails"),
    (dict(versions="1,2"), "Unikraft wants exactly '1'"),
])
def test_unikraft_refuses_what_would_crash_or_fail_it(sim, kw, why, backend):
    d, _, dom0 = sim
    backend(**kw)
    with UnikraftFrontend(d, DOMID, "share", timeout=5) as fe:
        with pytest.raises(FrontendError, match=why):
            fe.connect()
        assert dom0.read(FE_DIR + "/state") == str(int(XenbusState.Closing))


@pytest.mark.parametrize("cls,breaks", [(UnikraftFrontend, True), (SimFrontend, False)])
def test_unikraft_transport_breaks_on_a_reply_published_in_pieces(sim, cls, breaks, backend):
    """Only the header of a 100-byte reply is published: Unikraft would read 93 bytes of garbage; Linux waits."""
    d, _, _ = sim
    backend()  # it writes the in-ring only to answer requests, and none is sent
    with cls(d, DOMID, "share") as fe:
        tr = fe.connect()
        ring = fe.rings[0]
        struct.pack_into("<IBH", ring.data_view, 0, 100, m.Rread.TYPE, 1)
        struct.pack_into("<I", ring.intf_view, IntfLayout.IN_PROD, 7)
        if breaks:
            assert tr.recv_frame() is None and tr.closed
            assert "published with only 7 queued" in tr._error
        else:
            tr._scan()
            assert not tr.closed and ring.fr.in_cons == 0
        struct.pack_into("<I", ring.intf_view, IntfLayout.IN_PROD, 0)  # let the close run cleanly
