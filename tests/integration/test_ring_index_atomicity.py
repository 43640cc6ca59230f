"""Index words on the intf page are stored in one piece: a peer process never sees a torn or zeroed value.

struct.pack_into zero-fills a field before writing it; a guest polling in_prod through such
a store saw 0 under load (bench, ring workers). ring.py stores through a native u32 view.
"""
from __future__ import annotations

import mmap
import multiprocessing as mp
import os

from xen9p_common.ring import Intf, IntfLayout

STORES = 300_000


def _poll(path: str, started, done, out) -> None:
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, IntfLayout.PAGE_SIZE)
    intf = Intf(memoryview(m))
    bad = 0
    started.set()
    while not done.is_set():
        for _ in range(1000):
            v = intf.in_prod()
            if v not in (0xFFFFFFFF, 0x80000001):
                bad += 1
    out.put(bad)


def test_a_polling_process_never_reads_a_value_that_was_not_stored(tmp_path):
    path = str(tmp_path / "intf")
    with open(path, "wb") as f:
        f.write(b"\0" * IntfLayout.PAGE_SIZE)
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, IntfLayout.PAGE_SIZE)
    intf = Intf(memoryview(m))
    intf.store(IntfLayout.IN_PROD, 0xFFFFFFFF)
    ctx = mp.get_context("spawn")
    started, done, out = ctx.Event(), ctx.Event(), ctx.Queue()
    p = ctx.Process(target=_poll, args=(path, started, done, out))
    p.start()
    try:
        assert started.wait(30), "poller did not start"
        for i in range(STORES):
            intf.store(IntfLayout.IN_PROD, 0x80000001 if i & 1 else 0xFFFFFFFF)
        done.set()
        bad = out.get(timeout=30)
    finally:
        done.set()
        p.join(30)
        if p.is_alive():
            p.kill()
        del intf
        m.close()
        os.close(fd)
    assert bad == 0, f"the poller read {bad} values that were never stored"
