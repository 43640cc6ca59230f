"""Ring workers as real processes on the simulated platform: ring counts and orders, wrap-around, cross-ring cases.

Raw frames with chosen tags pick the ring (tag % num_rings), as Linux does.
"""
from __future__ import annotations

import errno
import os
import signal
import struct

import pytest

from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M
from xen9p_common.ring import IntfLayout

from .ring_worker_harness import Device
from tests.waiting import wait_for

O_RDWR = 2
GETATTR_ALL = 0x3FFF


def version(d: Device, msize: int) -> M.Rversion:
    r = d.guest.rpc(M.Tversion(M.NOTAG, msize, "9P2000.L"))  # NOTAG lands on ring 1, as on Linux
    assert isinstance(r, M.Rversion), r
    return r


def attach(d: Device, fid: int = 0, tag: int = 0) -> None:
    r = d.guest.rpc(M.Tattach(tag, fid, M.NOFID, "root", "", 0))
    assert isinstance(r, M.Rattach), r


def ok(d: Device, msg: M.Message, want: type | None = None):
    r = d.guest.rpc(msg)
    assert not isinstance(r, M.Rlerror), f"{msg!r} -> {r!r} ({os.strerror(r.ecode)})"
    if want is not None:
        assert isinstance(r, want), r
    return r


def err(d: Device, msg: M.Message) -> int:
    r = d.guest.rpc(msg)
    assert isinstance(r, M.Rlerror), f"{msg!r} -> {r!r}"
    return r.ecode


# -- ring counts and orders ---------------------------------------------------------------

@pytest.mark.parametrize("rings,order", [(1, 0), (1, 9), (2, 1), (2, 6), (8, 1), (8, 9)])
def test_rings_and_orders(device_factory, rings, order):
    d = device_factory(num_rings=rings, order=order)
    d.start()
    size = 1 << (order + 11)
    msize = min(512 * 1024 + 24, max(4096, size))
    assert version(d, msize).msize == msize
    attach(d)
    chunk = min(size - 64, 64 * 1024)
    for k in range(rings):  # one file made and used through every ring
        fid = 10 + k
        tag = k  # -> ring k
        ok(d, M.Twalk(tag, 0, fid, []), M.Rwalk)
        ok(d, M.Tlcreate(tag + rings, fid, f"f{k}", O_RDWR, 0o644, 0), M.Rlcreate)
        data = os.urandom(chunk)
        assert ok(d, M.Twrite(tag, fid, 0, data)).count == chunk
        assert ok(d, M.Tread(tag + rings, fid, 0, chunk)).data == data
        ok(d, M.Tclunk(tag, fid), M.Rclunk)
        with open(os.path.join(d.export, f"f{k}"), "rb") as f:
            assert f.read() == data
    if order == 9:
        # A 512 KiB Tread written straight into ring memory.
        big = os.urandom(512 * 1024)
        with open(os.path.join(d.export, "big"), "wb") as f:
            f.write(big)
        ok(d, M.Twalk(0, 0, 5, ["big"]), M.Rwalk)
        ok(d, M.Tlopen(1, 5, 0), M.Rlopen)
        assert ok(d, M.Tread(2, 5, 0, 512 * 1024)).data == big
    # Every ring answered on its own ring.
    for ring, tag, frame in d.guest.replies:
        assert ring == tag % rings
    codes = d.stop()
    assert set(codes.values()) == {0}
    assert d.ds.counters()["replies_total"] == len(d.guest.replies)


# -- wrap-around at every offset class ------------------------------------------------------

def _pads(pad: int, minimum: int, size: int) -> list[int]:
    if pad == 0:
        return []
    return [pad] if pad >= minimum else [size // 2, pad + size // 2]


def _pad_out(d: Device, fid: int, target_left: int, tag: int) -> None:
    """Write padding requests so the next request starts target_left bytes before the out half's end."""
    size = d.guest.size
    pad = (size - target_left - (d.guest.rings[0].fr.out_prod & (size - 1))) % size
    for p in _pads(pad, 23, size):
        ok(d, M.Twrite(tag, fid, 0, b"p" * (p - 23)), M.Rwrite)


def _pad_in(d: Device, fid: int, target_left: int, tag: int) -> None:
    """Read so the next reply starts target_left bytes before the in half's end."""
    size = d.guest.size
    pad = (size - target_left - (d.guest.rings[0].fr.in_cons & (size - 1))) % size
    for p in _pads(pad, 11, size):
        assert len(ok(d, M.Tread(tag, fid, 0, p - 11), M.Rread).data) == p - 11


def test_wrap_at_every_offset(device_factory):
    d = device_factory(num_rings=1, order=0)  # 2 KiB halves: many laps
    d.start()
    version(d, 4096)
    attach(d)
    ok(d, M.Twalk(1, 0, 1, []), M.Rwalk)
    ok(d, M.Tlcreate(1, 1, "w", O_RDWR, 0o644, 0), M.Rlcreate)
    for off in (0, 1050):  # so padding reads find data
        ok(d, M.Twrite(1, 1, off, b"p" * 1050), M.Rwrite)
    model = bytearray(b"p" * 2100)
    size = d.guest.size
    seen_out, seen_in = set(), set()
    for left in range(1, 48):
        # A request whose bytes cross the end `left` bytes in (header split for left < 7).
        _pad_out(d, 1, left, tag=2)
        start = d.guest.rings[0].fr.out_prod & (size - 1)
        payload = os.urandom(40 + left)
        off = 2200 + 64 * left
        assert ok(d, M.Twrite(3, 1, off, payload)).count == len(payload)
        seen_out.add(size - start)
        if len(model) < off + len(payload):
            model.extend(b"\0" * (off + len(payload) - len(model)))
        model[off:off + len(payload)] = payload
        # A reply whose bytes cross the end `left` bytes in.
        _pad_in(d, 1, left, tag=4)
        start = d.guest.rings[0].fr.in_cons & (size - 1)
        got = ok(d, M.Tread(5, 1, off, len(payload))).data
        assert got == payload
        seen_in.add(size - start)
    assert set(range(1, 48)) <= seen_out and set(range(1, 48)) <= seen_in
    with open(os.path.join(d.export, "w"), "rb") as f:
        host = f.read()
    assert host == bytes(model)


# -- cross-ring cases -------------------------------------------------------------------------

def test_fid_made_on_ring0_used_on_ring1_and_readdir_continues(device_factory):
    d = device_factory(num_rings=2, order=1)
    d.start()
    version(d, 4096)
    attach(d)
    for i in range(40):
        with open(os.path.join(d.export, f"entry-{i:03d}"), "w") as f:
            f.write(str(i))
    ok(d, M.Twalk(0, 0, 1, ["entry-007"]), M.Rwalk)   # ring 0
    ok(d, M.Tlopen(1, 1, 0), M.Rlopen)                 # ring 1
    assert ok(d, M.Tread(3, 1, 0, 100)).data == b"7"   # ring 1
    ok(d, M.Twalk(2, 0, 2, []), M.Rwalk)
    ok(d, M.Tlopen(4, 2, 0), M.Rlopen)
    names, offset, tag = [], 0, 0
    while True:  # alternate rings between Treaddir calls
        r = ok(d, M.Treaddir(tag, 2, offset, 200), M.Rreaddir)
        tag += 1
        if not r.data:
            break
        from xen9p_common.p9 import unpack_dirents
        ents = list(unpack_dirents(r.data))
        names += [e.name for e in ents]
        offset = ents[-1].offset
    assert sorted(n for n in names if n not in (".", "..")) == [f"entry-{i:03d}" for i in range(40)]


def test_xattr_fid_walked_written_clunked_on_three_rings(device_factory):
    d = device_factory(num_rings=3, order=1)
    d.start()
    version(d, 4096)
    attach(d)
    path = os.path.join(d.export, "x")
    open(path, "w").close()
    try:
        os.setxattr(path, "user.probe", b"1")
    except OSError:
        pytest.skip("the export's filesystem has no user xattrs")
    value = b"v" * 300
    ok(d, M.Twalk(0, 0, 1, ["x"]), M.Rwalk)                                # ring 0
    ok(d, M.Txattrcreate(3, 1, "user.test", len(value), 0), M.Rxattrcreate)  # ring 0
    ok(d, M.Twrite(1, 1, 0, value[:100]), M.Rwrite)                         # ring 1
    ok(d, M.Twrite(4, 1, 100, value[100:]), M.Rwrite)                       # ring 1
    ok(d, M.Tclunk(2, 1), M.Rclunk)                                         # ring 2
    assert os.getxattr(path, "user.test") == value


def test_tversion_on_one_ring_resets_all(device_factory):
    d = device_factory(num_rings=2, order=1)
    d.start()
    version(d, 8192)
    attach(d)
    ok(d, M.Twalk(0, 0, 1, []), M.Rwalk)
    ok(d, M.Twalk(1, 0, 2, []), M.Rwalk)
    assert d.ds.fids.count() == 3
    assert version(d, 4096 + 24).msize == 4096 + 24  # arrives on ring 1
    assert d.ds.fids.count() == 0 and d.ds.session.msize == 4096 + 24
    assert err(d, M.Tgetattr(0, 1, GETATTR_ALL)) == errno.ENOENT   # ring 0 sees it too
    assert err(d, M.Tgetattr(1, 2, GETATTR_ALL)) == errno.ENOENT
    attach(d, fid=1, tag=0)
    ok(d, M.Tgetattr(1, 1, GETATTR_ALL), M.Rgetattr)


def test_directory_rename_updates_fids_for_every_worker(device_factory):
    d = device_factory(num_rings=2, order=1)
    d.start()
    version(d, 8192)
    attach(d)
    os.makedirs(os.path.join(d.export, "a", "b"))
    with open(os.path.join(d.export, "a", "b", "f"), "w") as f:
        f.write("inside")
    ok(d, M.Twalk(0, 0, 5, ["a", "b", "f"]), M.Rwalk)    # ring 0
    ok(d, M.Twalk(1, 0, 6, ["a", "b"]), M.Rwalk)         # ring 1
    ok(d, M.Trenameat(3, 0, "a", 0, "c"), M.Rrenameat)   # ring 1
    assert d.ds.fids.get(5).path == b"c/b/f" and d.ds.fids.get(6).path == b"c/b"
    ok(d, M.Tlopen(2, 5, 0), M.Rlopen)                   # ring 0, by the new path
    assert ok(d, M.Tread(4, 5, 0, 100)).data == b"inside"
    ok(d, M.Twalk(6, 6, 7, ["f"]), M.Rwalk)
    assert d.ds.fids.get(7).path == b"c/b/f"


def test_open_unlink_on_one_ring_read_through_another(device_factory):
    d = device_factory(num_rings=2, order=1)
    d.start()
    version(d, 8192)
    attach(d)
    ok(d, M.Twalk(0, 0, 7, []), M.Rwalk)
    ok(d, M.Tlcreate(2, 7, "gone", O_RDWR, 0o644, 0), M.Rlcreate)   # ring 0 holds the fd
    ok(d, M.Twrite(4, 7, 0, b"still here"), M.Rwrite)
    ok(d, M.Tunlinkat(6, 0, "gone", 0), M.Runlinkat)
    assert not os.path.exists(os.path.join(d.export, "gone"))
    assert ok(d, M.Tread(1, 7, 0, 100)).data == b"still here"       # ring 1
    ok(d, M.Twrite(3, 7, 10, b"!"), M.Rwrite)                        # ring 1 writes too
    assert ok(d, M.Tread(8, 7, 0, 100)).data == b"still here!"       # ring 0 sees it
    ok(d, M.Tclunk(5, 7), M.Rclunk)


def test_tflush_on_ring0_of_blocked_request_on_ring1(device_factory):
    d = device_factory(num_rings=2, order=1)
    d.start()
    version(d, 8192)
    attach(d)
    ok(d, M.Twalk(0, 0, 1, []), M.Rwalk)
    ok(d, M.Tlcreate(2, 1, "l", O_RDWR, 0o644, 0), M.Rlcreate)
    ok(d, M.Twalk(4, 0, 2, ["l"]), M.Rwalk)
    ok(d, M.Tlopen(7, 2, O_RDWR), M.Rlopen)  # ring 1 opens what ring 1 locks
    r = ok(d, M.Tlock(8, 1, C.LOCK_TYPE_WRLCK, 0, 0, 10, 1, "a"), M.Rlock)
    assert r.status == C.LOCK_SUCCESS
    # Owner b blocks on ring 1 (tag 11), then a Tflush on ring 0 names it.
    d.guest.send(M.encode(M.Tlock(11, 2, C.LOCK_TYPE_WRLCK, C.LOCK_FLAGS_BLOCK, 0, 10, 2, "b")))
    wait_for(lambda: d.ds.journal(1).tag_pending(11), what="Tlock taken on ring 1")
    r = d.guest.rpc(M.Tflush(12, 11))
    assert isinstance(r, M.Rflush)
    # A later request on ring 1 is served, and the flushed Tlock never gets an answer.
    ok(d, M.Tgetattr(13, 2, GETATTR_ALL), M.Rgetattr)
    d.guest.poll(0.05)
    assert [t for _, t, _ in d.guest.replies].count(11) == 0
    # Tflush of a request already answered: Rflush at once.
    assert isinstance(d.guest.rpc(M.Tflush(14, 13)), M.Rflush)
    assert not d.ds.journal(1).tag_pending(11)


def test_tflush_waits_for_the_reply_of_a_running_request(device_factory):
    d = device_factory(num_rings=2, order=1)
    d.start()
    version(d, 8192)
    attach(d)
    # Tflush on ring 1 for a request on ring 0 that is already answered or answering: the
    # reply must come before the Rflush, never after.
    base = len(d.guest.replies)
    for tag in range(0, 400, 2):  # a flood: many flushes waiting on the other ring at once
        d.guest.send(M.encode(M.Tgetattr(tag, 0, GETATTR_ALL)))
        d.guest.send(M.encode(M.Tflush(tag + 1, tag)))
    for tag in range(0, 400, 2):
        rflush = d.guest.take(tag + 1)
        assert M.decode(rflush).TYPE == M.Rflush.TYPE
    order = [t for _, t, _ in d.guest.replies[base:]]
    assert len(order) == len(set(order))
    for tag in range(0, 400, 2):
        if tag in order:  # answered (not flushed away): strictly before its Rflush
            assert order.index(tag) < order.index(tag + 1)


# -- bounds, errors, shutdown -------------------------------------------------------------------

def test_max_fids_refused_cleanly(device_factory):
    d = device_factory(num_rings=2, order=1, max_fids=8)
    d.start()
    version(d, 8192)
    attach(d)
    for fid in range(1, 8):
        ok(d, M.Twalk(fid, 0, fid, []), M.Rwalk)
    assert err(d, M.Twalk(8, 0, 8, [])) == errno.EMFILE
    assert err(d, M.Twalk(9, 0, 8, [])) == errno.EMFILE
    ok(d, M.Tclunk(10, 3), M.Rclunk)
    ok(d, M.Twalk(11, 0, 8, []), M.Rwalk)
    ok(d, M.Tgetattr(12, 8, GETATTR_ALL), M.Rgetattr)


def test_ring_protocol_violation_disconnects_only_that_ring(device_factory):
    d = device_factory(num_rings=2, order=1)
    d.start()
    version(d, 8192)
    attach(d)
    r0 = d.guest.rings[0]
    # out_prod far beyond what the ring can hold.
    struct.pack_into("<I", r0.intf, IntfLayout.OUT_PROD, (r0.fr.out_prod + 10 * d.guest.size) & 0xFFFFFFFF)
    d.guest.evt.notify(r0.port)
    m = d.wait_msg(lambda n, m: m.get("type") == "error" and n.endswith("ring0"), "error from ring 0")
    assert m["fatal"] is True
    assert d.procs[0].wait(timeout=15) == 65
    ok(d, M.Tgetattr(1, 0, GETATTR_ALL), M.Rgetattr)  # ring 1 is untouched


def test_sigterm_drains_and_exits_zero(device_factory):
    d = device_factory(num_rings=2, order=1)
    d.start()
    version(d, 8192)
    attach(d)
    before = len(d.guest.replies)
    for tag in range(32):
        d.guest.send(M.encode(M.Tgetattr(tag, 0, GETATTR_ALL)))
    d.procs[0].send_signal(signal.SIGTERM)
    d.procs[1].send_signal(signal.SIGTERM)
    assert d.procs[0].wait(timeout=15) == 0 and d.procs[1].wait(timeout=15) == 0
    d.guest.poll(0.01)
    tags = [t for _, t, _ in d.guest.replies[before:]]
    assert len(tags) == len(set(tags))  # never twice; untaken ones stay for a successor
    d.start()
    wait_for(lambda: d.guest.poll(0.05) is not None and len(d.guest.replies) - before >= 32, 10, "32 replies")
    d.guest.poll(0.05)  # and nothing more: a request answered twice would show here
    tags = [t for _, t, _ in d.guest.replies[before:]]
    assert sorted(tags) == list(range(32))
    d.wait_msg(lambda n, m: m.get("type") == "heartbeat" and n == "dom7/dev0/ring1", "a heartbeat")
    assert d.stop() == {0: 0, 1: 0}
    wait_for(lambda: d.pump(0.05) or sum(m.get("type") == "bye" for _, m in d.msgs) == 4, what="4 byes")
    stats = [m["metrics"] for n, m in d.msgs if m.get("type") == "stats"]
    last = stats[-1]
    assert all(isinstance(v, (int, float)) for v in last.values())
    assert any(s.get("op_Tgetattr_total", 0) > 0 and s.get("op_Tgetattr_latency_us_le_inf", 0) ==
               s["op_Tgetattr_total"] for s in stats)


def test_guest_not_consuming_replies_stalls_nothing_else(device_factory):
    d = device_factory(num_rings=1, order=0)  # 2 KiB: about twelve Rgetattr fit
    d.start()
    version(d, 4096)
    attach(d)
    base = len(d.guest.replies)
    frames = [M.encode(M.Tgetattr(100 + i, 0, GETATTR_ALL)) for i in range(60)]
    r = d.guest.rings[0]
    for f in frames:  # written without taking any reply off the ring
        assert r.fr.write_request(f)
    d.guest.evt.notify(r.port)
    seen = len(d.msgs)
    # The worker keeps its loop: heartbeats go on while replies wait for room.
    for _ in range(2):
        d.wait_msg(lambda n, m: m.get("type") == "heartbeat" and d.msgs.index((n, m)) >= seen, "heartbeat")
        seen = len(d.msgs)
    assert d.procs[0].poll() is None
    wait_for(lambda: d.guest.poll(0.02) is not None and len(d.guest.replies) - base >= 60, what="60 replies")
    d.guest.poll(0.05)
    tags = sorted(t for _, t, _ in d.guest.replies[base:])
    assert tags == list(range(100, 160))
