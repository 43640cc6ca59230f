"""ShmQidStore: qid.path numbers agree across every attachment of a device state, whatever the order of asking."""
from __future__ import annotations

import uuid

import pytest

from xen9p_worker.backend.qidmap import NO_PREFIX, QidPathMap
from xen9p_worker.shared.device_state import DeviceState, DeviceStateError
from xen9p_worker.shared import layout as L


@pytest.fixture
def state():
    name = f"xen9p-test-{uuid.uuid4().hex[:12]}"
    made = []

    def make(**kw):
        if not made:
            made.append(DeviceState.create(name, max_fids=4, max_open_files=0, max_space_mb=0, export="/tmp",
                                           security_model="none", msize_cap=8192, num_rings=2, **kw))
            return made[0]
        made.append(DeviceState.attach(name))
        return made[-1]

    yield make
    for ds in reversed(made):
        ds.close()
    made[0].unlink()


def test_two_attachments_asking_in_opposite_orders_agree(state):
    a, b = state(), state()
    ma, mb = QidPathMap(10, a.qids), QidPathMap(10, b.qids)
    pa = [ma.path(d, 7) for d in (11, 12, 13)]
    pb = [mb.path(d, 7) for d in (13, 12, 11)][::-1]
    assert pa == pb and len(set(pa)) == 3 and ma.path(10, 7) == mb.path(10, 7) == 7


def test_a_new_attachment_sees_the_old_numbers(state):
    a = state()
    first = QidPathMap(10, a.qids)
    want = {d: first.path(d, 99) for d in (20, 21)}
    big = first.path(21, 1 << 50)
    later = QidPathMap(10, state().qids)  # a replacement worker: asks in the other order
    assert {d: later.path(d, 99) for d in (21, 20)} == want
    assert later.path(21, 1 << 50) == big != later.path(20, 1 << 50)


def test_another_root_device_is_refused(state):
    a = state()
    QidPathMap(10, a.qids)
    with pytest.raises(OSError):
        QidPathMap(11, state().qids)


def test_full_prefix_table_sends_the_rest_to_the_overflow_map(state):
    a = state(qid_devs=2, qid_overflow=4)
    m, other = QidPathMap(10, a.qids), QidPathMap(10, state().qids)
    assert m.path(11, 5) == (1 << 48) | 5
    assert a.qids.prefix(12) == NO_PREFIX and m.base(12) is None
    p12, p13 = m.path(12, 5), other.path(13, 5)
    assert p12 >> 48 == p13 >> 48 == 0xFFFF and p12 != p13
    assert other.path(12, 5) == p12 and m.path(13, 5) == p13
    m.path(12, 6), m.path(12, 7)
    with pytest.raises(OSError):
        m.path(12, 8)  # four overflow entries taken


def test_an_old_layout_is_refused(state):
    a = state()
    L.U32.pack_into(a.buf, L.H_LAYOUT, 1)
    with pytest.raises(DeviceStateError):
        state()
    L.U32.pack_into(a.buf, L.H_LAYOUT, L.LAYOUT_VERSION)
