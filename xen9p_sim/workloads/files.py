"""Simulated-guest workloads on single files: smoke (one of each op), copy (a big file, hashed), locks.

Each is a WorkloadFn: it runs in its own directory and reports mismatches through Check.
"""
from __future__ import annotations

import hashlib
import random

from xen9p_sim.client import Fid
from xen9p_common.p9 import constants as c
from xen9p_sim.workloads.kit import Check, Progress, pattern, read_file, write_file


# -- smoke --------------------------------------------------------------------------

def smoke(d: Fid, rnd: random.Random, scale: int, p: Progress, check: Check) -> None:
    """One of each common operation, each checked."""
    payload = b"hello from a simulated guest\n" * 64
    write_file(d, "hello.txt", payload, p)
    check(read_file(d, "hello.txt", p) == payload, "smoke: read back differs")
    with d.walk("hello.txt") as f:
        st = f.getattr()
    p.op()
    check(st.size == len(payload), f"smoke: size {st.size} != {len(payload)}")
    d.mkdir("sub", 0o755)
    p.op()
    d.rename("hello.txt", d, "renamed.txt")
    p.op()
    names = set(d.listdir())
    p.op()
    check(names == {"renamed.txt", "sub"}, f"smoke: listing {sorted(names)}")
    d.symlink("link", "renamed.txt")
    with d.walk("link") as ln:
        check(ln.readlink() == "renamed.txt", "smoke: readlink")
    p.op()
    with d.open_path(["renamed.txt"], c.L_O_RDWR) as f:
        f.setattr(size=5)
        f.fsync()
        check(f.read(0) == payload[:5], "smoke: truncate")
    p.op()
    d.statfs()
    p.op()
    d.unlink("link")
    d.unlink("renamed.txt")
    d.rmdir("sub")
    p.op()
    check(d.listdir() == [], "smoke: directory not empty after cleanup")


# -- copy ---------------------------------------------------------------------------

def copy(d: Fid, rnd: random.Random, scale: int, p: Progress, check: Check) -> None:
    """A big file written, read back and copied, compared by SHA-256."""
    size = 8 * (1 << 20) * scale
    chunk = 1 << 20
    src_sum = hashlib.sha256()
    with d.create("big.bin", c.L_O_WRONLY | c.L_O_CREAT | c.L_O_TRUNC, 0o644) as f:
        for off in range(0, size, chunk):
            block = pattern(rnd, min(chunk, size - off))
            src_sum.update(block)
            f.write(block, off)
            p.op(len(block))
    got = hashlib.sha256()
    with d.open_path(["big.bin"], c.L_O_RDONLY) as src, \
            d.create("copy.bin", c.L_O_WRONLY | c.L_O_CREAT | c.L_O_TRUNC, 0o644) as dst:
        for off in range(0, size, chunk):
            block = src.read(off, chunk)
            got.update(block)
            dst.write(block, off)
            p.op(2 * len(block))
    check(got.hexdigest() == src_sum.hexdigest(), "copy: read-back checksum differs")
    again = hashlib.sha256()
    with d.open_path(["copy.bin"], c.L_O_RDONLY) as f:
        for off in range(0, size, chunk):
            block = f.read(off, chunk)
            again.update(block)
            p.op(len(block))
    check(again.hexdigest() == src_sum.hexdigest(), "copy: copy checksum differs")
    d.unlink("big.bin")
    d.unlink("copy.bin")
    p.op()


# -- locks --------------------------------------------------------------------------

def locks(d: Fid, rnd: random.Random, scale: int, p: Progress, check: Check) -> None:
    """POSIX byte-range locks between two lock owners on two fids of one file."""
    write_file(d, "locked", b"x" * 4096, p)
    with d.open_path(["locked"], c.L_O_RDWR) as a, d.open_path(["locked"], c.L_O_RDWR) as b:
        for i in range(20 * scale):
            start = rnd.randrange(0, 4000)
            check(a.lock(c.LOCK_TYPE_WRLCK, start, 64, proc_id=1, client_id="guest-a") == c.LOCK_SUCCESS,
                  "locks: first write lock refused")
            p.op()
            g = b.getlock(c.LOCK_TYPE_WRLCK, start, 64, proc_id=2, client_id="guest-b")
            p.op()
            check(g.type == c.LOCK_TYPE_WRLCK, f"locks: getlock sees type {g.type}, want the conflicting write lock")
            st = b.lock(c.LOCK_TYPE_WRLCK, start + 10, 8, proc_id=2, client_id="guest-b")
            p.op()
            check(st == c.LOCK_BLOCKED, f"locks: conflicting lock got status {st}, want BLOCKED")
            a.lock(c.LOCK_TYPE_UNLCK, start, 64, proc_id=1, client_id="guest-a")
            p.op()
            st = b.lock(c.LOCK_TYPE_WRLCK, start + 10, 8, proc_id=2, client_id="guest-b")
            p.op()
            check(st == c.LOCK_SUCCESS, f"locks: lock after unlock got status {st}")
            b.lock(c.LOCK_TYPE_UNLCK, 0, 0, proc_id=2, client_id="guest-b")
            p.op()
    d.unlink("locked")
    p.op()
