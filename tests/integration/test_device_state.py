"""DeviceState: create/attach/close/unlink, the header the supervisor writes, session reset across attachments."""
from __future__ import annotations

import os
import uuid

import pytest

from xen9p_common.p9 import Qid
from xen9p_worker.shared.device_state import SHM_DIR, DeviceState, DeviceStateError
from xen9p_worker.fids import FID_PATH, FidEntry


def _name() -> str:
    return f"xen9p-test-{uuid.uuid4().hex[:12]}"


def test_create_attach_fields_and_cleanup(tmp_path):
    name = _name()
    ds = DeviceState.create(name, max_fids=100, max_open_files=20, max_space_mb=512, export=str(tmp_path),
                            security_model="mapped-xattr", msize_cap=128 * 1024 + 24, num_rings=4,
                            max_files=5000, auto_delete=True)
    try:
        assert os.path.exists(os.path.join(SHM_DIR, name))
        with pytest.raises(FileExistsError):
            DeviceState.create(name, max_fids=1, max_open_files=0, max_space_mb=0, export="/",
                               security_model="none", msize_cap=8192, num_rings=1)
        w = DeviceState.attach(name)
        assert (w.max_fids, w.max_open_files, w.max_space_mb, w.export, w.security_model, w.msize_cap,
                w.num_rings, w.max_files, w.auto_delete) == \
            (100, 20, 512, str(tmp_path), "mapped-xattr", 128 * 1024 + 24, 4, 5000, True)
        assert w.claim_ring(2)
        assert not ds.claim_ring(2)  # a second live worker for ring 2 is refused
        w.close()
        assert ds.claim_ring(2)  # released when the holder closes (or dies)
        counters = ds.counters()
        assert counters["fids"] == 0 and counters["requests_total"] == 0
    finally:
        ds.close()
        ds.unlink()
    assert not os.path.exists(os.path.join(SHM_DIR, name))
    with pytest.raises(DeviceStateError):
        DeviceState.attach(name)


def test_supervisor_default_size_is_sparse():
    """16384 fids (xen9pd's default) cost address space, not memory, until fids are used."""
    name = _name()
    ds = DeviceState.create(name, max_fids=16384, max_open_files=1024, max_space_mb=0, export="/",
                            security_model="none", msize_cap=512 * 1024 + 24, num_rings=8)
    try:
        st = os.stat(os.path.join(SHM_DIR, name))
        assert st.st_size > 80 << 20
        assert st.st_blocks * 512 < 2 << 20
    finally:
        ds.close()
        ds.unlink()


def test_bad_names_and_bad_segments():
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError):
            DeviceState.attach(bad)
    name = _name()
    with open(os.path.join(SHM_DIR, name), "wb") as f:
        f.write(b"\0" * 8192)
    try:
        with pytest.raises(DeviceStateError):
            DeviceState.attach(name)
    finally:
        os.unlink(os.path.join(SHM_DIR, name))


def test_session_reset_is_seen_by_every_attachment():
    name = _name()
    ds = DeviceState.create(name, max_fids=8, max_open_files=0, max_space_mb=0, export="/",
                            security_model="none", msize_cap=8192, num_rings=2)
    w = DeviceState.attach(name)
    try:
        w.fids.add(1, FidEntry(FID_PATH, b"", Qid(0x80, 0, 1), 0))
        w.locks.lock((1, 2), ("c", 1), 1, 0, 10, 1)
        e0 = w.session.epoch
        removed = ds.session.reset(65536, "9P2000.L")
        assert [f for f, _ in removed] == [1]
        assert (w.session.msize, w.session.version, w.session.epoch) == (65536, "9P2000.L", e0 + 1)
        assert w.fids.count() == 0 and w.locks.locks((1, 2)) == []
        ds.store_ring_counters(1, {"requests_total": 5, "in_flight": 2})
        assert w.counters()["requests_total"] == 5
    finally:
        w.close()
        ds.close()
        ds.unlink()
