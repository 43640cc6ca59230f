"""What a Mini-OS guest (Xenstore-stubdom) does on its 9pfs share, checked: files created, written, read, stat'ed,
removed — with a kexec live update half-way that keeps the session's fids (fid 0 and an open log file).
"""
from __future__ import annotations

import random
import time

from xen9p_common.errors import Xen9pError
from xen9p_common.p9 import constants as c
from xen9p_sim.frontend.minios import MiniOSFrontend
from xen9p_sim.frontend.minios_session import ROOT_FID, MiniOSSession
from xen9p_sim.workloads.kit import Check, Progress, Summary

STAT_FILE_TYPE_BITS = c.DMDIR | c.DMSYMLINK | c.DMDEVICE | c.DMNAMEDPIPE | c.DMSOCKET


def live_update(fe: MiniOSFrontend, session: MiniOSSession, msize: int | None = None) -> MiniOSSession:
    """kexec: the old kernel's session ends; the new one re-uses the ring and sends Tversion only.

    Mini-OS asks for the same msize; another `msize` (a misbehaving guest) makes it a real reset. The new
    kernel knows which fids the old one holds (they stay open on the server), so it never reuses one.
    """
    want = session.msize if msize is None else msize
    session.close()
    new = MiniOSSession(fe.live_update(), timeout=session.timeout,
                        fids_in_use=session.fids_in_use if msize is None else frozenset())
    granted = new.version(want)
    if granted != want:
        raise Xen9pError(f"live update: Tversion granted msize {granted}, asked {want}")
    return new


def minios(fe: MiniOSFrontend, session: MiniOSSession, *, seed: int = 1, scale: int = 1,
           progress: Progress | None = None) -> tuple[Summary, MiniOSSession]:
    """Run the workload; returns its Summary and the session in use at the end (a new one after the update)."""
    p = progress or Progress()
    summary = Summary("minios")
    check = Check(p, summary.details)
    rnd = random.Random(f"minios-{seed}")
    ops0, bytes0, err0 = p.ops, p.bytes, p.errors
    t0 = time.monotonic()
    s = session
    try:
        s = _run(fe, s, rnd, max(1, scale), f"minios-{seed}", p, check)
    except Xen9pError as e:
        check(False, f"minios: {type(e).__name__}: {e}")
    summary.seconds = time.monotonic() - t0
    summary.ops, summary.bytes, summary.errors = p.ops - ops0, p.bytes - bytes0, p.errors - err0
    return summary, s


def _run(fe: MiniOSFrontend, s: MiniOSSession, rnd: random.Random, scale: int, prefix: str, p: Progress,
         check: Check) -> MiniOSSession:
    # Sizes below, at and above one Twrite / Tread chunk (msize - 23 / msize - 11).
    sizes = [100, s.msize - 23, 3 * s.msize + 5] * scale
    files: dict[str, bytes] = {}
    log = s.open(f"{prefix}.log", c.ORDWR | c.OTRUNC, create=True)
    log_data = bytearray()
    half = len(sizes) // 2
    for i, size in enumerate(sizes):
        if i == half:
            s = live_update(fe, s)
            p.op()
            root = s.stat(ROOT_FID)  # fid 0 survives: Mini-OS attaches only once
            check(bool(root.mode & c.DMDIR), f"minios: fid 0 after the live update is no directory ({root.mode:#x})")
        name = f"{prefix}-{i}.dat"
        data = rnd.randbytes(size)
        f = s.open(name, c.ORDWR, create=True, perm=0o640)
        check(s.write(f, 0, data) == size, f"minios: short write of {name}")
        check(s.read(f, 0, size + 10) == data, f"minios: {name} reads back differently")
        st = s.stat(f.fid)
        check(st.length == size and st.name == name, f"minios: Tstat of {name}: length {st.length} name {st.name!r}")
        check(st.mode & STAT_FILE_TYPE_BITS == 0 and st.mode & 0o777 == 0o640,
              f"minios: Tstat of {name}: mode {st.mode:#o}")
        s.clunk(f.fid)
        files[name] = data
        p.op(2 * size)
        line = f"file {name} {size}\n".encode()
        check(s.write(log, len(log_data), line) == len(line), "minios: log append")  # an open fid, kept across
        log_data += line
        p.op(len(line))
    for name, data in files.items():  # re-open what exists: Topen, no Tcreate
        f = s.open(name, c.OREAD)
        check(s.read(f, 0, len(data)) == data, f"minios: {name} differs when re-opened")
        s.clunk(f.fid)
        p.op(len(data))
    check(s.read(log, 0, len(log_data) + 1) == bytes(log_data), "minios: the log differs")
    s.clunk(log.fid)
    for name in list(files) + [f"{prefix}.log"]:
        s.remove(s.walk(name))
        p.op()
    return s
