"""Ring worker fast paths, driven by a guest that holds replies back: held Treads and their Tflush, the loop's alloc.

Also the dispatcher's table-less inline ops under Tflush and tag reuse, and the notifies of a long drain.
"""
from __future__ import annotations

import errno
import os
import struct

import pytest

from xen9p_common.p9 import messages as M
from xen9p_worker.shared import journal as J

from .ring_worker_harness import Device, GuestRing
from tests.waiting import wait_for

GETATTR_ALL = 0x3FFF
BIG = 512 * 1024
BIG_MSIZE = BIG + 24


# -- the guest's view of its in-rings, without consuming ------------------------------------

def queued(g: GuestRing) -> list[tuple[int, int, int]]:
    """(tag, type, size) of every whole reply between in_cons and in_prod; in_cons does not move."""
    cons, prod = struct.unpack_from("<II", g.intf, 0)
    size = g.fr.size
    ring = g.data[:size]
    out = []
    while (prod - cons) & 0xFFFFFFFF >= 7:
        hdr = bytes(ring[(cons + i) & (size - 1)] for i in range(7))
        n, mtype, tag = struct.unpack("<IBH", hdr)
        if n > (prod - cons) & 0xFFFFFFFF:
            break
        out.append((tag, mtype, n))
        cons = (cons + n) & 0xFFFFFFFF
    return out


def wait_queued(d: Device, ring: int, tag: int, what: str, timeout: float = 10.0) -> tuple[int, int, int]:
    """The queued reply with tag on ring, once the worker has published it (the guest takes nothing)."""
    g = d.guest.rings[ring]
    return wait_for(lambda: next((q for q in queued(g) if q[0] == tag), None), timeout, what)


def consume(d: Device, ring: int) -> list[bytes]:
    """Take every whole reply off one ring only, record it like the harness does, tell the worker."""
    g = d.guest.rings[ring]
    got = []
    with g.lock:
        while True:
            rep = g.fr.read_reply()
            if rep is None:
                break
            got.append(rep)
            d.guest.replies.append((ring, struct.unpack_from("<H", rep, 5)[0], rep))
        if got:
            d.guest.evt.notify(g.port)
    return got


def tags_seen(d: Device, since: int = 0) -> list[int]:
    return [t for _, t, _ in d.guest.replies[since:]]


def heartbeats_go_on(d: Device, ring: int, n: int = 2, timeout: float = 5.0) -> None:
    """n fresh heartbeats from ring's worker: its loop thread is not stuck (the harness beats every 0.5 s)."""
    name = f"dom{d.guest.domid}/dev0/ring{ring}"
    for _ in range(n):
        seen = len(d.msgs)
        d.wait_msg(lambda who, m: who == name and m.get("type") == "heartbeat" and d.msgs.index((who, m)) >= seen,
                   f"a heartbeat from {name} (is the loop thread blocked?)", timeout)


# -- a device with a file to read -----------------------------------------------------------

def setup(d: Device, msize: int, size: int, fid: int = 1) -> bytes:
    """Tversion, Tattach (fid 0), a file `data` of `size` random bytes opened on `fid`; its contents."""
    d.start()
    r = d.guest.rpc(M.Tversion(M.NOTAG, msize, "9P2000.L"))
    assert isinstance(r, M.Rversion) and r.msize == msize, r
    assert isinstance(d.guest.rpc(M.Tattach(0, 0, M.NOFID, "root", "", 0)), M.Rattach)
    data = os.urandom(size)
    with open(os.path.join(d.export, "data"), "wb") as f:
        f.write(data)
    assert isinstance(d.guest.rpc(M.Twalk(0, 0, fid, ["data"])), M.Rwalk)
    assert isinstance(d.guest.rpc(M.Tlopen(0, fid, 0)), M.Rlopen)
    return data


def send(d: Device, msg: M.Message, ring: int | None = None) -> None:
    d.guest.send(M.encode(msg), ring)


def rread(frame: bytes) -> bytes:
    m = M.decode(frame)
    assert isinstance(m, M.Rread), m
    assert struct.unpack_from("<I", frame, 0)[0] == len(frame) == 11 + len(m.data)
    return m.data


def fill_in_ring(d: Device, fid: int, leave: int, tags: list[int], ring: int = 0) -> None:
    """Rread replies the guest does not take, until `leave` bytes of ring's in-half stay free."""
    size = d.guest.size
    free = size - sum(q[2] for q in queued(d.guest.rings[ring]))
    counts = [(free - leave) // len(tags) - 11] * len(tags)
    counts[-1] += (free - leave) - sum(c + 11 for c in counts)
    for tag, count in zip(tags, counts):
        send(d, M.Tread(tag, fid, 0, count), ring)
    for tag in tags:
        wait_queued(d, ring, tag, f"filler Rread {tag}")
    assert size - sum(q[2] for q in queued(d.guest.rings[ring])) == leave


# -- 1. a Tread whose reply does not fit yet is held, then served whole ------------------------

def test_tread_that_does_not_fit_is_held_until_the_guest_consumes(device_factory):
    d = device_factory(num_rings=1, order=9)  # 1 MiB halves; a 512 KiB Rread fits an empty one
    data = setup(d, BIG_MSIZE, 2 * BIG)
    fill_in_ring(d, 1, leave=300 * 1024, tags=[10, 11])   # 300 KiB free < 512 KiB + 11
    base = len(d.guest.replies)
    send(d, M.Tread(12, 1, 4096, BIG))
    wait_for(lambda: d.ds.journal(0).tag_pending(12), what="Tread taken")
    heartbeats_go_on(d, 0, n=1)  # an I/O thread parked on the room would hold the reply lock by now
    send(d, M.Tgetattr(13, 1, GETATTR_ALL))
    # The Tread waits unanswered, and no thread holds the reply lock waiting for room for it:
    # the Rgetattr sent after it is published at once.
    wait_queued(d, 0, 13, "Rgetattr behind the held Tread (a Tread parked on the room blocks it)", timeout=5)
    assert 12 not in [q[0] for q in queued(d.guest.rings[0])]
    assert d.ds.journal(0).tag_pending(12)
    # The guest consumes: the Tread goes out, whole and correct (its reply wraps the ring's end).
    frame = d.guest.take(12)
    assert len(frame) == 11 + BIG
    assert rread(frame) == data[4096:4096 + BIG]
    d.guest.poll(0.01)
    assert sorted(tags_seen(d, base)) == [10, 11, 12, 13]
    assert not d.ds.journal(0).tag_pending(12)
    # Held Treads are served oldest first while the guest keeps up.
    fill_in_ring(d, 1, leave=100 * 1024, tags=[14, 19])
    base = len(d.guest.replies)
    for i, tag in enumerate((15, 16, 17)):
        send(d, M.Tread(tag, 1, i * 1000, BIG))
    wait_for(lambda: d.ds.journal(0).tag_pending(17), what="Treads taken")
    heartbeats_go_on(d, 0, n=1)
    send(d, M.Tgetattr(18, 1, GETATTR_ALL))
    wait_queued(d, 0, 18, "Rgetattr behind three held Treads", timeout=5)
    for i, tag in enumerate((15, 16, 17)):
        assert rread(d.guest.take(tag)) == data[i * 1000:i * 1000 + BIG]
    assert [t for t in tags_seen(d, base) if t in (15, 16, 17)] == [15, 16, 17]


# -- 2. a Tflush withdraws a held Tread -------------------------------------------------------

@pytest.mark.parametrize("rings", [1, 2], ids=["same-ring", "other-ring"])
def test_tflush_of_held_tread_withdraws_it(device_factory, rings):
    d = device_factory(num_rings=rings, order=9)
    data = setup(d, BIG_MSIZE, BIG)
    fill_in_ring(d, 1, leave=200 * 1024, tags=[10, 12])   # ring 0 (even tags)
    base = len(d.guest.replies)
    send(d, M.Tread(20, 1, 0, BIG))                        # ring 0: held
    send(d, M.Tgetattr(22, 1, GETATTR_ALL))
    wait_queued(d, 0, 22, "Rgetattr behind the held Tread")
    flush_tag = 31 if rings == 2 else 30                   # the other ring's Tflush goes through its journal
    send(d, M.Tflush(flush_tag, 20))
    # Rflush comes while ring 0's replies are still unread: the held Tread never started.
    q = wait_queued(d, flush_tag % rings, flush_tag, "Rflush of the held Tread")
    assert q[1] == M.Rflush.TYPE
    assert 20 not in [q[0] for q in queued(d.guest.rings[0])]
    wait_for(lambda: not d.ds.journal(0).tag_pending(20), what="flushed Tread resolved in the journal")
    # The guest consumes everything: no Rread 20 ever, and the tag is free again.
    d.guest.poll(0.01)
    assert isinstance(d.guest.rpc(M.Tgetattr(24, 1, GETATTR_ALL)), M.Rgetattr)  # ring 0, after the room came
    assert tags_seen(d, base).count(20) == 0
    assert tags_seen(d, base).count(flush_tag) == 1
    r = d.guest.rpc(M.Tread(20, 1, 100, 1000))
    assert isinstance(r, M.Rread) and r.data == data[100:1100]
    assert tags_seen(d, base).count(20) == 1


# -- 3. the loop thread's alloc never waits: the Tread goes to the I/O pool --------------------

def test_tread_on_loop_while_an_io_thread_waits_for_room_goes_to_the_pool(device_factory):
    d = device_factory(num_rings=1, order=1)  # 4 KiB halves
    data = setup(d, 4096, 64 * 1024)
    os.makedirs(os.path.join(d.export, "dir"))
    for i in range(120):
        open(os.path.join(d.export, "dir", f"entry-with-a-long-name-{i:04d}"), "w").close()
    assert isinstance(d.guest.rpc(M.Twalk(0, 0, 2, ["dir"])), M.Rwalk)
    assert isinstance(d.guest.rpc(M.Tlopen(0, 2, 0)), M.Rlopen)
    fill_in_ring(d, 1, leave=200, tags=[10])
    base = len(d.guest.replies)
    # Treaddir runs on the I/O pool; its ~2 KiB reply does not fit, so that thread holds the
    # reply lock while it waits for the guest.
    send(d, M.Treaddir(11, 2, 0, 2000))
    wait_for(lambda: any(r.tag == 11 and r.state == J.DONE for r in d.ds.journal(0).records()),
             what="Treaddir served, its reply waiting for room")
    # A small page-cached Tread fits, but the loop cannot take the reply lock: its alloc must
    # raise BlockingIOError (Tread to the pool), not wait, so the loop keeps beating.
    send(d, M.Tread(12, 1, 777, 50))
    send(d, M.Tgetattr(13, 1, GETATTR_ALL))  # loop reply with the lock busy: deferred, not waited for
    wait_for(lambda: d.ds.journal(0).tag_pending(13), what="Tgetattr taken")
    heartbeats_go_on(d, 0, n=2)
    assert [q[0] for q in queued(d.guest.rings[0])] == [10]
    assert d.procs[0].poll() is None
    # The guest consumes: every reply arrives once and whole.
    assert rread(d.guest.take(12)) == data[777:827]
    assert isinstance(M.decode(d.guest.take(11)), M.Rreaddir)
    assert isinstance(M.decode(d.guest.take(13)), M.Rgetattr)
    d.guest.poll(0.01)
    assert sorted(tags_seen(d, base)) == [10, 11, 12, 13]


def test_tread_not_in_page_cache_is_read_on_the_pool(device_factory):
    d = device_factory(num_rings=1, order=6)  # 128 KiB halves
    data = setup(d, 64 * 1024 + 24, 4 << 20)
    path = os.path.join(d.export, "data")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # RWF_NOWAIT then gets EAGAIN (where honoured)
    finally:
        os.close(fd)
    base = len(d.guest.replies)
    offsets = [i * 300_000 + 7 for i in range(12)]
    for k, off in enumerate(offsets):  # in flight together: later ones find the reply lock taken
        send(d, M.Tread(40 + k, 1, off, 9000))
    for k, off in enumerate(offsets):
        assert rread(d.guest.take(40 + k)) == data[off:off + 9000]
    d.guest.poll(0.01)
    assert sorted(tags_seen(d, base)) == list(range(40, 52))


def test_tread_short_reads_at_eof_served_inline(device_factory):
    d = device_factory(num_rings=1, order=1)
    data = setup(d, 4096, 1000)
    cases = [(900, 500, data[900:]), (1000, 10, b""), (5000, 10, b""), (0, 0, b""), (0, 4085, data)]
    for tag, (off, count, want) in enumerate(cases, start=50):
        r = d.guest.rpc(M.Tread(tag, 1, off, count))
        assert isinstance(r, M.Rread) and r.data == want, (off, count)
    assert d.guest.rpc(M.Tread(60, 0, 0, 10)).ecode in (errno.EBADF, errno.EISDIR)  # fid 0 not open


# -- 4. inline ops outside the in-flight table still honour Tflush ------------------------------

def test_tflush_of_inline_op_waiting_for_room_gets_one_rflush_after_its_reply(device_factory):
    d = device_factory(num_rings=1, order=1)
    setup(d, 4096, 8192)
    fill_in_ring(d, 1, leave=40, tags=[10])   # an Rgetattr (160 bytes) cannot fit
    base = len(d.guest.replies)
    send(d, M.Tgetattr(11, 1, GETATTR_ALL))
    send(d, M.Tflush(12, 11))
    send(d, M.Twalk(13, 0, 5, []))
    send(d, M.Tflush(14, 13))
    wait_for(lambda: d.ds.journal(0).tag_pending(14), what="the last Tflush taken")
    for t in (11, 13):  # the Tflush cannot withdraw an op that has already run: it waits for its reply
        assert d.ds.journal(0).tag_pending(t), f"tag {t} withdrawn by a Tflush, never answered"
    assert d.ds.journal(0).tag_pending(12) and d.ds.journal(0).tag_pending(14)
    heartbeats_go_on(d, 0, n=1)
    assert [q[0] for q in queued(d.guest.rings[0])] == [10]
    d.guest.take(12)
    d.guest.take(14)
    d.guest.poll(0.01)
    seen = tags_seen(d, base)
    for op, flush in ((11, 12), (13, 14)):
        assert seen.count(op) == 1 and seen.count(flush) == 1, seen
        assert seen.index(op) < seen.index(flush), seen
    assert not d.ds.journal(0).records() or all(r.state == J.PUBLISHED for r in d.ds.journal(0).records())


def test_tflush_and_tag_reuse_of_inline_ops(device_factory):
    d = device_factory(num_rings=2, order=1)
    setup(d, 4096, 8192)
    base = len(d.guest.replies)
    # Answered already: Rflush at once, and never a second reply for the old tag.
    for round_ in range(3):
        for op in (M.Tgetattr(4, 1, GETATTR_ALL), M.Twalk(4, 0, 6, []), M.Tclunk(4, 6),
                   M.Tstatfs(4, 0), M.Txattrwalk(4, 0, 7, "")):
            r = d.guest.rpc(op)
            assert not isinstance(r, M.Rlerror), (op, r)
            assert isinstance(d.guest.rpc(M.Tflush(6, 4)), M.Rflush)      # same ring (0)
            assert isinstance(d.guest.rpc(M.Tflush(5, 4)), M.Rflush)      # other ring (1)
            if isinstance(op, M.Txattrwalk):
                assert isinstance(d.guest.rpc(M.Tclunk(8, 7)), M.Rclunk)
    seen = tags_seen(d, base)
    assert seen.count(4) == 15 and seen.count(6) == 15 and seen.count(5) == 15
    # A flood where the Tflush follows each inline op at once, the tag reused every time.
    base = len(d.guest.replies)
    for i in range(100):
        send(d, M.Tgetattr(2, 1, GETATTR_ALL))   # ring 0
        send(d, M.Tflush(4, 2))                  # ring 0
        send(d, M.Tflush(3, 2))                  # ring 1
        for tag in (3, 4):
            assert isinstance(M.decode(d.guest.take(tag)), M.Rflush)
        assert isinstance(M.decode(d.guest.take(2)), M.Rgetattr)
    d.guest.poll(0.01)
    seen = tags_seen(d, base)
    assert seen.count(2) == 100 and seen.count(3) == 100 and seen.count(4) == 100
    # Each Rflush after the reply it names, on its own ring and across rings.
    assert [t for t in seen if t in (2, 4)] == [2, 4] * 100
    assert [t for t in seen if t in (2, 3)] == [2, 3] * 100


def test_cross_ring_tflush_of_inline_op_waiting_for_room(device_factory):
    d = device_factory(num_rings=2, order=1)
    setup(d, 4096, 8192)
    fill_in_ring(d, 1, leave=40, tags=[10], ring=0)
    base = len(d.guest.replies)
    send(d, M.Tgetattr(12, 1, GETATTR_ALL))     # ring 0: reply deferred, no room
    wait_for(lambda: d.ds.journal(0).tag_pending(12), what="Tgetattr taken on ring 0")
    kick = d.ds.journal(0).kick_requested()
    send(d, M.Tflush(13, 12))                   # ring 1
    wait_for(lambda: d.ds.journal(0).kick_acked() > kick, what="ring 0 saw the cancel")
    send(d, M.Tgetattr(15, 1, GETATTR_ALL))     # ring 1 serves on (taken without touching ring 0)
    wait_queued(d, 1, 15, "Rgetattr on ring 1")
    # Not answered while the Rgetattr it names is unpublished: the Tflush cannot withdraw it.
    assert 13 not in tags_seen(d, base) and 13 not in [q[0] for q in queued(d.guest.rings[1])]
    assert [q[0] for q in queued(d.guest.rings[0])] == [10]
    consume(d, 1)
    consume(d, 0)
    d.guest.take(13)
    d.guest.poll(0.01)
    seen = tags_seen(d, base)
    assert seen.count(12) == 1 and seen.count(13) == 1
    assert seen.index(12) < seen.index(13)


# -- 5. a long drain notifies every few requests ------------------------------------------------

def sent_events(d: Device, ring: int) -> int:
    """Events raised on the guest's port of ring so far (the sim's SENT word: one per worker notify)."""
    from xen9p_common.platform.sim.evtchn import EV_SENT, EV_WORDS
    port = d.guest.rings[ring].port
    return d.guest.evt._tables[d.guest.domid].ev[port * EV_WORDS + EV_SENT]


def test_long_drain_notifies_every_few_requests(device_factory):
    from xen9p_worker.ring_worker import NOTIFY_BATCH
    d = device_factory(num_rings=1, order=4)  # 32 KiB halves: 96 Rgetattr fit unread
    setup(d, 8192, 100)
    g = d.guest.rings[0]
    n = 96
    before = sent_events(d, 0)
    base = len(d.guest.replies)
    with g.lock:  # all written, then one event: the worker takes them in one drain
        for i in range(n):
            assert g.fr.write_request(M.encode(M.Tgetattr(100 + i, 1, GETATTR_ALL)))
        d.guest.evt.notify(g.port)
    wait_for(lambda: len(queued(g)) == n, what=f"{n} replies published")
    notifies = (sent_events(d, 0) - before) & 0xFFFFFFFF
    # One per NOTIFY_BATCH requests of the drain (give or take the pass's own and the split
    # of the requests over passes), not one per pass.
    assert notifies >= n // NOTIFY_BATCH - 4, notifies
    d.guest.poll(0.01)
    assert sorted(tags_seen(d, base)) == list(range(100, 100 + n))
