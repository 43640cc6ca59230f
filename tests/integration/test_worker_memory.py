"""A ring worker's memory stays flat under large short-lived buffers (xen9p_worker.memtune).

Without it, twenty reads of a 10,000-entry directory at msize 512 KiB grew a worker's anonymous
memory by ~13 MB (glibc kept the buffers in per-thread arenas)."""
from __future__ import annotations

import os

from xen9p_worker.memtune import tune_malloc


def _anon_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no Anonymous line in smaps_rollup")


def test_tune_malloc_applies_on_glibc_unless_told_not_to(monkeypatch):
    assert tune_malloc() is (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    monkeypatch.setenv("XEN9P_MALLOC_TUNE", "0")
    assert tune_malloc() is False


def test_directory_reads_do_not_grow_the_worker(device_factory):
    d = device_factory(num_rings=1, order=9)
    names = os.path.join(d.export, "big")
    os.mkdir(names)
    for i in range(10000):
        open(os.path.join(names, f"entry-with-a-longish-name-{i:06d}"), "w").close()
    d.start()
    c = d.connect(msize=512 * 1024)
    root = c.attach()
    with root.walk("big") as w:
        w.open()
        assert len(w.listdir()) == 10000  # warm up: imports, first buffers
    base = _anon_mb(d.procs[0].pid)
    for _ in range(20):
        with root.walk("big") as w:
            w.open()
            assert len(w.listdir()) == 10000
    grown = _anon_mb(d.procs[0].pid) - base
    assert grown < 6, f"worker anonymous memory grew {grown:.1f} MB over 20 directory reads"
