"""Invalid frontend values put that device in Closed with a warning naming it; nothing else is disturbed."""
from __future__ import annotations

import os

import pytest

from tests.e2e.xen9pd_helpers import Guest, xen9pd_world


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("fv"))
    with xen9pd_world(tmp) as (xs, d):
        good = Guest(xs, 2).attach(tmp)
        good.connect(2)
        yield tmp, xs, d, good


CASES = [
    ("num-rings 0", dict(num_rings=0, refs=[], ports=[]), "num-rings 0 is out of range 1..8"),
    ("num-rings 99", dict(num_rings=99, refs=["100"], ports=["10"]), "num-rings 99 is out of range 1..8"),
    ("ref 0", dict(num_rings=2, refs=["100", "0"], ports=["10", "11"]), "ring-ref1 0 is out of range"),
    ("port 0", dict(num_rings=1, refs=["100"], ports=["0"]), "event-channel-0 0 is out of range"),
    ("non-numeric ref", dict(num_rings=1, refs=["0x10"], ports=["10"]), "ring-ref0 '0x10' is not a decimal"),
    ("negative port", dict(num_rings=1, refs=["5"], ports=["-3"]), "event-channel-0 '-3' is not a decimal"),
    ("huge ref", dict(num_rings=1, refs=["99999999999"], ports=["3"]), "ring-ref0 '99999999999' is not a decimal"),
    ("missing port", dict(num_rings=2, refs=["5", "6"], ports=["3"]), "event-channel-1 is missing"),
    ("bad version", dict(num_rings=1, version="2"), "frontend version '2'"),
]


@pytest.mark.parametrize("label,kw,reason", CASES, ids=[c[0] for c in CASES])
def test_invalid_frontend_values_close_only_that_device(env, label, kw, reason):
    tmp, xs, d, good = env
    domid = 30 + [c[0] for c in CASES].index(label)
    g = Guest(xs, domid).attach(tmp)
    g.connect(wait=False, **kw)
    g.wait_be(6)
    logs = d.wait_log(f"dom{domid}/dev0: disconnecting: ")
    line = [x for x in logs.splitlines() if f"dom{domid}/dev0: disconnecting: " in x][0]
    assert reason in line, line
    assert d.device(f"dom{domid}/dev0")["rings"] == []
    assert good.be_state() == 4 and d.device("dom2/dev0")["state"] == "connected"
    assert d.proc.poll() is None


def test_bad_toolstack_config_closes_device(env):
    tmp, xs, d, good = env
    missing = f"{tmp}/missing/export"
    g = Guest(xs, 50, kind="9pfs").attach(missing)  # QEMU's kind never creates its export
    g.wait_be(6)
    assert f"dom50/dev0: disconnecting: export {missing} does not exist on this host" in d.logs()
    assert not os.path.exists(f"{tmp}/missing")
    g2 = Guest(xs, 51).attach(tmp, security_model="bogus")
    g2.wait_be(6)
    assert "security_model 'bogus'" in d.logs()
    assert good.be_state() == 4
