"""Small device states in /dev/shm for the shared-memory tests: one made, one attached, both removed."""
from __future__ import annotations

import contextlib
import uuid

from xen9p_worker.shared.device_state import DeviceState


@contextlib.contextmanager
def attached_pair(**sizes):
    """(created, attached) views of one fresh state; `sizes` override the small defaults."""
    name = f"xen9p-test-{uuid.uuid4().hex[:12]}"
    kw = dict(max_fids=4, max_open_files=0, max_space_mb=0, export="/tmp", security_model="none",
              msize_cap=8192, num_rings=2)
    kw.update(sizes)
    ds = DeviceState.create(name, **kw)
    try:
        other = DeviceState.attach(name)
        try:
            yield ds, other
        finally:
            other.close()
    finally:
        ds.close()
        ds.unlink()
