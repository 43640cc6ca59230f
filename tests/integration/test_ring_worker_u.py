"""9P2000.u against real ring-worker processes on the simulated platform: a Mini-OS-shaped session
(one ring of order 4, Tversion under an ordinary tag, attach with afid 0, live-update re-init), the
dialect shared by every ring and kept by a restarted worker, Rerror from the ring worker's own
error paths, and a Unikraft-shaped .L session (msize = the whole ring, Tcreate/Tremove)."""
from __future__ import annotations

import errno
import os

import pytest

from xen9p_sim.client import Client, P9Error
from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M

from .ring_worker_harness import Device

U = C.VERSION_9P2000U


def ok(d: Device, msg: M.Message, want: type):
    r = d.guest.rpc(msg)
    assert isinstance(r, want), f"{msg!r} -> {r!r}"
    return r


def rerror(d: Device, msg: M.Message) -> int:
    r = d.guest.rpc(msg)
    assert isinstance(r, M.Rerror), f"{msg!r} -> {r!r}"
    assert 0 < len(r.ename.encode()) <= 64
    return r.ecode


def test_minios_shaped_session_on_one_order4_ring(device_factory):
    d = device_factory(num_rings=1, order=4)
    d.start()
    cl = Client(d.guest, timeout=20.0)
    d.client = cl
    assert cl.version(16384, U, notag=False).version == U  # msize = half the 32 KiB ring
    root = cl.attach("root", "root", 0, afid=0)
    f = root.walk()
    with pytest.raises(P9Error) as ei:
        f.walk_raw(["log"], f)
    assert ei.value.ename and ei.value.errno == errno.ENOENT
    f.create_raw("log", 0o644, C.OWRITE)
    payload = os.urandom(16384 - 23)  # Mini-OS's largest write at this msize
    assert f.write(payload, 0) == len(payload)
    f.clunk()
    g = root.walk(["log"]).open_u(C.OREAD)
    assert g.read(0, 16384 - 11) == payload and g.stat().length == len(payload)
    g.clunk()
    # kexec: the new kernel sends Tversion only and goes on with its fids.
    assert cl.version(16384, U, notag=False, keep_fids=True).version == U
    q = root.stat().qid
    assert (q.type, q.path) == (root.qid.type, root.qid.path)  # version follows the mtime
    h = root.walk(["log"])
    h.remove()
    assert not os.path.exists(os.path.join(d.export, "log"))
    # A restarted worker keeps the dialect: errors are still Rerror, fids still there.
    d.kill(0)
    d.start(0)
    with pytest.raises(P9Error) as ei:
        root.walk(["log"])
    assert ei.value.ename and ei.value.errno == errno.ENOENT
    assert root.stat().name == "/"


def test_dialect_is_the_devices_on_every_ring(device_factory):
    d = device_factory(num_rings=2, order=1)
    d.start()
    assert ok(d, M.Tversion(M.NOTAG, 8192, U), M.Rversion).version == U  # on ring 1
    ok(d, M.Tattach(0, 0, 0, "root", "", 0), M.Rattach)                   # ring 0, afid 0
    assert ok(d, M.Tstat(2, 0), M.Rstat).stat.name == "/"                 # ring 0
    assert rerror(d, M.Tgetattr(4, 0, 0x7FF)) == errno.EOPNOTSUPP          # .L-only, ring 0
    assert rerror(d, M.Tgetattr(5, 0, 0x7FF)) == errno.EOPNOTSUPP          # ring 1
    # A malformed Tflush is refused by the ring worker itself: Rerror too.
    d.guest.send(M.HEADER.pack(7 + 1, M.Tflush.TYPE, 6) + b"\x01")
    r = M.decode(d.guest.take(6))
    assert isinstance(r, M.Rerror) and r.ecode == errno.EPROTO
    # Back to .L on ring 1: ring 0 answers Rlerror again.
    ok(d, M.Tversion(M.NOTAG, 8192, "9P2000.L"), M.Rversion)
    ok(d, M.Tattach(0, 0, M.NOFID, "root", "", 0), M.Rattach)
    r = d.guest.rpc(M.Tstat(2, 0))
    assert isinstance(r, M.Rlerror) and r.ecode == errno.EOPNOTSUPP


def test_unikraft_shaped_session_msize_is_the_whole_ring(device_factory):
    """Order 6 (128 KiB each way), msize 128 KiB: an Rread of msize bytes fills the in-ring."""
    d = device_factory(num_rings=2, order=6)
    d.start()
    size = d.guest.size
    assert ok(d, M.Tversion(M.NOTAG, size, "9P2000.L"), M.Rversion).msize == size
    ok(d, M.Tattach(0, 0, M.NOFID, "", "", 0xFFFFFFFF), M.Rattach)
    ok(d, M.Twalk(1, 0, 1, []), M.Rwalk)
    r = ok(d, M.Tcreate(3, 1, "dir", C.DMDIR | 0o755, C.OREAD, ""), M.Rcreate)
    assert r.qid.type == C.QTDIR and os.path.isdir(os.path.join(d.export, "dir"))
    ok(d, M.Tclunk(5, 1), M.Rclunk)
    data = os.urandom(size)
    with open(os.path.join(d.export, "big"), "wb") as fh:
        fh.write(data)
    for tag in (0, 1):  # both rings: each reply is exactly one ring's worth
        ok(d, M.Twalk(tag, 0, 10 + tag, ["big"]), M.Rwalk)
        ok(d, M.Tlopen(tag + 2, 10 + tag, C.L_O_RDONLY), M.Rlopen)
        for _ in range(3):  # again and again, wherever the ring's cursor is
            frame_tag = tag + 4
            d.guest.send(M.encode(M.Tread(frame_tag, 10 + tag, 0, size - 11)))
            raw = d.guest.take(frame_tag)
            assert len(raw) == size
            assert M.decode(raw).data == data[:size - 11]
    ok(d, M.Twalk(6, 0, 20, ["dir"]), M.Rwalk)
    ok(d, M.Tremove(8, 20), M.Rremove)
    assert not os.path.exists(os.path.join(d.export, "dir"))


def test_reply_larger_than_the_ring_is_an_rerror(device_factory):
    """Order 0: a 2 KiB in-ring under the 4 KiB minimum msize. A Tread or a directory read whose
    reply cannot fit gets the ring worker's EMSGSIZE, as Rerror in a .u session."""
    d = device_factory(num_rings=1, order=0)
    d.start()
    ok(d, M.Tversion(1, 4096, U), M.Rversion)
    ok(d, M.Tattach(2, 0, 0, "root", "", 0), M.Rattach)
    with open(os.path.join(d.export, "f"), "wb") as fh:
        fh.write(os.urandom(3000))
    for i in range(40):
        open(os.path.join(d.export, f"entry-{i:03d}-with-a-long-name"), "wb").close()
    ok(d, M.Twalk(3, 0, 1, ["f"]), M.Rwalk)
    ok(d, M.Topen(4, 1, C.OREAD), M.Ropen)
    assert rerror(d, M.Tread(5, 1, 0, 3000)) == errno.EMSGSIZE
    assert len(ok(d, M.Tread(6, 1, 0, 1000), M.Rread).data) == 1000  # still serving
    ok(d, M.Twalk(7, 0, 2, []), M.Rwalk)
    ok(d, M.Topen(8, 2, C.OREAD), M.Ropen)
    assert rerror(d, M.Tread(9, 2, 0, 4000)) == errno.EMSGSIZE


def test_many_u_requests_in_flight_on_one_ring(device_factory):
    d = device_factory(num_rings=1, order=4)
    d.start()
    ok(d, M.Tversion(1, 16384, U), M.Rversion)
    ok(d, M.Tattach(2, 0, 0, "root", "", 0), M.Rattach)
    for tag in range(10, 42):  # all sent before any reply is taken
        d.guest.send(M.encode(M.Tstat(tag, 0)))
    for tag in range(10, 42):
        r = M.decode(d.guest.take(tag))
        assert isinstance(r, M.Rstat) and r.stat.name == "/"
