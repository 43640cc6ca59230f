"""RingJournal: record life cycle, published-vs-in_prod arithmetic across the u32 wrap, adoption."""
from __future__ import annotations

import uuid

import pytest

from xen9p_worker.shared.device_state import DeviceState
from xen9p_worker.shared import journal as J


@pytest.fixture
def ds():
    name = f"xen9p-test-{uuid.uuid4().hex[:12]}"
    d = DeviceState.create(name, max_fids=4, max_open_files=0, max_space_mb=0, export="/tmp",
                           security_model="none", msize_cap=8192, num_rings=2, journal_slots=4)
    yield d
    d.close()
    d.unlink()


def test_life_cycle_and_full(ds):
    j = ds.journal(1)
    assert j.adopt() == []
    slots = [j.start(100 + i, 11, i, 120) for i in range(4)]
    assert j.start(200, 11, 9, 120) == -1  # full: the worker stops taking requests
    j.done(slots[0], b"\x07\x00\x00\x00\x79\x00\x00")
    j.replying(slots[0], 0xFFFFFFFC, 7)
    recs = {r.slot: r for r in ds.journal(1).records()}
    assert recs[slots[0]].state == J.REPLYING and recs[slots[0]].stored.startswith(b"\x07")
    assert ds.journal(0).records() == []
    assert j.tag_pending(1) and not j.tag_pending(9)
    j.published(slots[1])
    assert not j.tag_pending(1)
    j.release(slots[2])
    assert j.free_slots() == 1


@pytest.mark.parametrize("pos,length,in_prod,published", [
    (0, 7, 7, True), (0, 7, 6, False), (0, 7, 0, False),
    (0xFFFFFFFC, 7, 3, True), (0xFFFFFFFC, 7, 2, False), (0xFFFFFFFC, 7, 0xFFFFFFFC, False),
    (10, 5, 10 + 5 + 4096, True),
])
def test_published_by(pos, length, in_prod, published):
    r = J.Record(0, J.REPLYING, 0, 0, 0, 0, pos, length, b"")
    assert r.published_by(in_prod) is published
    assert J.Record(0, J.PUBLISHED, 0, 0, 0, 0, 0, 0, b"").published_by(0)
    assert not J.Record(0, J.DONE, 0, 0, 0, 0, 0, 0, b"x").published_by(in_prod)


def test_adopt_sees_predecessor_records(ds):
    j = ds.journal(0)
    j.adopt()
    s = j.start(40, 19, 3, 110)
    again = DeviceState.attach(ds.name)
    try:
        recs = again.journal(0).adopt()
        assert [(r.slot, r.state, r.tag, r.req_index, r.req_size, r.mtype) for r in recs] == \
            [(s, J.STARTED, 3, 40, 19, 110)]
        assert again.journal(0).free_slots() == 3
    finally:
        again.close()


def test_kick_and_cancel_mailbox(ds):
    j = ds.journal(1)
    with ds.mutex:
        want = j.request_kick()
        assert j.post_cancel(77)
    assert j.kick_acked() < want and j.cancels_waiting()
    j.ack_kick(j.kick_requested())
    assert j.kick_acked() >= want
    assert j.take_cancels() == [77] and not j.cancels_waiting()
