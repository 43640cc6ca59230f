"""What a Unikraft guest does that Linux does not, checked: mkdir by the legacy Tcreate, rm by Tremove, and a
Tread whose reply fills the whole in-ring (msize is the whole one-direction ring). A WorkloadFn on any .L mount.
"""
from __future__ import annotations

import errno
import random

from xen9p_sim.client import Fid, P9Error
from xen9p_common.p9 import constants as c
from xen9p_common.p9 import messages as m
from xen9p_sim.frontend.unikraft import uk_mkdir, uk_remove
from xen9p_sim.workloads.kit import Check, Progress, write_file

RREAD_OVERHEAD = 11


def unikraft(d: Fid, rnd: random.Random, scale: int, p: Progress, check: Check) -> None:
    client = d.client
    for i in range(scale):
        sub = f"ukdir-{i}"
        qid = uk_mkdir(d, sub)
        check(bool(qid.type & c.QTDIR), f"unikraft: Tcreate DMDIR gave qid type {qid.type:#x}")
        with d.walk([sub]) as sd:
            st = sd.getattr(c.GETATTR_MODE | c.GETATTR_SIZE)
            # Unikraft needs both bits back in `valid`.
            check(st.valid & (c.GETATTR_MODE | c.GETATTR_SIZE) == c.GETATTR_MODE | c.GETATTR_SIZE,
                  f"unikraft: Rgetattr valid {st.valid:#x}")
            check(st.mode & 0o170000 == 0o040000, f"unikraft: {sub} mode {st.mode:#o} is no directory")
            p.op()
            full = client.msize - RREAD_OVERHEAD  # the Rread is msize bytes: the whole in-ring
            data = rnd.randbytes(full + 1000)
            write_file(sd, "big", data, p)
            with sd.open_path(["big"], c.L_O_RDONLY) as f:
                got = bytes(client.rpc(m.Tread, f.fid, 0, full).data)
            check(got == data[:full], f"unikraft: a full-ring Tread returned {len(got)} bytes, want {full}")
            p.op(len(got))
            write_file(sd, "small", b"x" * 10, p)
            check(sorted(sd.listdir()) == ["big", "small"], "unikraft: listing after creates")
            for name in ("big", "small"):
                uk_remove(sd, name)
                p.op()
            check(sd.listdir() == [], "unikraft: directory not empty after Tremove")
        uk_remove(d, sub)
        p.op()
        try:
            d.walk([sub]).clunk()
            check(False, f"unikraft: {sub} still there after Tremove")
        except P9Error as e:
            check(e.errno == errno.ENOENT, f"unikraft: walk to the removed {sub}: {e}")
