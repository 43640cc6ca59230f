"""SIGKILL a ring worker mid-stream and restart it: every request answered exactly once, nothing applied twice.

Sixteen guest lanes keep requests in flight on both rings (mkdir, walk, getattr, clunk, write).
"""
from __future__ import annotations

import os
import threading

import pytest

from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M

from .ring_worker_harness import Device
from tests.waiting import wait_for

LANES = 16
ITERS = 30
O_RDWR = 2


class Lane(threading.Thread):
    def __init__(self, d: Device, lane: int, progress: list) -> None:
        super().__init__(name=f"lane-{lane}", daemon=True)
        self.d, self.lane, self.progress = d, lane, progress
        self.sent = 0
        self.errors: list[str] = []

    def rpc(self, i: int, k: int, msg_cls, *fields):
        tag = 1000 + self.lane * 16 + (i * 5 + k) % 16
        msg = msg_cls(tag, *fields)
        self.sent += 1
        r = self.d.guest.rpc(msg)
        if isinstance(r, M.Rlerror):
            self.errors.append(f"{msg!r} -> errno {r.ecode} ({os.strerror(r.ecode)})")
        return r

    def run(self) -> None:
        try:
            fid = 100 + self.lane
            for i in range(ITERS):
                name = f"l{self.lane}-{i}"
                self.rpc(i, 0, M.Tmkdir, 0, name, 0o755, 0)
                r = self.rpc(i, 1, M.Twalk, 0, fid, [name])
                if isinstance(r, M.Rwalk) and len(r.wqids) != 1:
                    self.errors.append(f"walk {name}: {r!r}")
                self.rpc(i, 2, M.Tgetattr, fid, 0x7FF)
                self.rpc(i, 3, M.Tclunk, fid)
                tag = 1000 + self.lane * 16 + (i * 5 + 4) % 16
                data = f"{self.lane:02d}:{i:03d}:".encode().ljust(16, b"x")
                # Each ring writes through the file it opened itself.
                r = self.rpc(i, 4, M.Twrite, 50 + tag % 2, (self.lane * ITERS + i) * 16, data)
                if isinstance(r, M.Rwrite) and r.count != 16:
                    self.errors.append(f"short write {r!r}")
                self.progress[0] += 1
        except BaseException as e:  # reported by the test, not lost in a thread
            self.errors.append(f"lane crashed: {e!r}")


@pytest.fixture
def device(tmp_path):
    d = Device(tmp_path, num_rings=2, order=1, max_fids=256)
    yield d
    d.close()


def test_sigkill_mid_stream_every_reply_exactly_once(device):
    d = device
    d.start()
    r = d.guest.rpc(M.Tversion(M.NOTAG, 8192, "9P2000.L"))
    assert isinstance(r, M.Rversion)
    assert isinstance(d.guest.rpc(M.Tattach(0, 0, M.NOFID, "root", "", 0)), M.Rattach)
    for tag, fid in ((0, 50), (1, 51)):
        assert isinstance(d.guest.rpc(M.Twalk(tag, 0, fid, [])), M.Rwalk)
        r = d.guest.rpc(M.Tlcreate(tag, fid, f"data{fid}", O_RDWR, 0o644, 0))
        assert isinstance(r, M.Rlcreate), r
    base = len(d.guest.replies)
    progress = [0]
    lanes = [Lane(d, k, progress) for k in range(LANES)]
    for lane in lanes:
        lane.start()
    total = LANES * ITERS
    codes = []
    for ring, at in ((1, total // 4), (0, total // 2), (1, 3 * total // 4)):
        wait_for(lambda: progress[0] >= at, timeout=60, what=f"{at} iterations")
        codes.append(d.kill(ring))  # SIGKILL with requests in flight
        d.start(ring)
    for lane in lanes:
        lane.join(timeout=120)
        assert not lane.is_alive()
    assert codes == [-9, -9, -9]
    errors = [e for lane in lanes for e in lane.errors]
    assert errors == []
    # Exactly once: one reply per request, no reply left over, nothing still journalled.
    sent = sum(lane.sent for lane in lanes)
    d.guest.poll(0.05)
    assert len(d.guest.replies) - base == sent
    assert d.guest._ready == []
    assert d.stop() == {0: 0, 1: 0}
    for ring in (0, 1):
        assert d.ds.journal(ring).records() == []
    assert sorted(x for x in os.listdir(d.export) if x.startswith("l")) == \
        sorted(f"l{k}-{i}" for k in range(LANES) for i in range(ITERS))
    content = b""
    for fid in (50, 51):
        with open(os.path.join(d.export, f"data{fid}"), "rb") as f:
            content = f.read()
            for lane in range(LANES):
                for i in range(ITERS):
                    tag = 1000 + lane * 16 + (i * 5 + 4) % 16
                    if 50 + tag % 2 == fid:
                        off = (lane * ITERS + i) * 16
                        assert content[off:off + 16] == f"{lane:02d}:{i:03d}:".encode().ljust(16, b"x")


# Ring 1 serves (as its n-th reply): 1 Rversion, 2 Twalk, 3 Tmkdir, 4 Tclunk, 5 Tunlinkat, 6 Tlcreate.
OPS = {
    "walk": 2, "mkdir": 3, "clunk": 4, "unlinkat": 5, "lcreate": 6,
}


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("point", ["applied", "done", "replying", "published"])
def test_crash_at_each_journal_step(device, point, op):
    """The worker dies at one step of one reply; its successor answers that request exactly once."""
    d = device
    d.start(0)
    d.start(1, extra_env={"XEN9P_RING_FAULT": f"{point}:{OPS[op]}"})
    steps = [
        (M.Tversion(M.NOTAG, 8192, "9P2000.L"), M.Rversion),
        (M.Tattach(0, 0, M.NOFID, "root", "", 0), M.Rattach),          # ring 0
        (M.Twalk(1, 0, 5, []), M.Rwalk),                               # ring 1, reply 2
        (M.Tmkdir(3, 0, "m", 0o755, 0), M.Rmkdir),                     # reply 3
        (M.Tclunk(5, 5), M.Rclunk),                                    # reply 4
        (M.Tunlinkat(7, 0, "m", 0x200), M.Runlinkat),                  # reply 5 (AT_REMOVEDIR)
        (M.Twalk(2, 0, 6, []), M.Rwalk),                               # ring 0
        (M.Tlcreate(9, 6, "c", O_RDWR | 0o200, 0o644, 0), M.Rlcreate),  # reply 6 (O_EXCL)
        (M.Twrite(11, 6, 0, b"after"), M.Rwrite),
        (M.Tgetattr(13, 6, 0x7FF), M.Rgetattr),
    ]
    _, died_on = d.steps_through_a_crash(steps, f"{point}/{op}")
    assert died_on is not None, "the fault never fired"
    d.guest.poll(0.05)
    assert len(d.guest.replies) == len(steps)  # exactly once each
    assert not os.path.exists(os.path.join(d.export, "m"))
    with open(os.path.join(d.export, "c"), "rb") as f:
        assert f.read() == b"after"
    assert d.stop() == {0: 0, 1: 0}
    assert d.ds.ring_counters(1)["resumed_total"] == 1  # the successor found it in the journal


@pytest.mark.parametrize("repeat", [False, True], ids=["new-data", "same-data-again"])
@pytest.mark.parametrize("point", ["noted", "applied", "done", "replying", "published"])
def test_crash_around_an_o_append_write_appends_it_once(device, point, repeat):
    """A Twrite to an O_APPEND file is not idempotent: its successor must not append it a second
    time when the predecessor had (applied), nor drop it when it had not (noted: died just before
    the append), also when the file already ends with the same bytes."""
    d = device
    second = b"same\n" if repeat else b"other\n"
    d.start(0)
    # Ring 1 serves: reply 1 Rversion, 2 Twalk, 3 Tlcreate, 4 and 5 (note 1 and 2) the first two appends.
    d.start(1, extra_env={"XEN9P_RING_FAULT": "noted:2" if point == "noted" else f"{point}:5"})
    steps = [
        (M.Tversion(M.NOTAG, 8192, "9P2000.L"), M.Rversion),
        (M.Tattach(0, 0, M.NOFID, "root", "", 0), M.Rattach),                             # ring 0
        (M.Twalk(1, 0, 5, []), M.Rwalk),
        (M.Tlcreate(3, 5, "log", O_RDWR | C.L_O_APPEND, 0o644, 0), M.Rlcreate),
        (M.Twrite(5, 5, 0, b"same\n"), M.Rwrite),
        (M.Twrite(7, 5, 0, second), M.Rwrite),                                             # the crash
        (M.Twrite(9, 5, 0, b"end\n"), M.Rwrite),
    ]
    got, died_on = d.steps_through_a_crash(steps, point)
    assert died_on is not None, "the fault never fired"
    assert died_on.tag == 7, f"died on {died_on!r}, not on the second append"
    d.guest.poll(0.05)
    assert len(d.guest.replies) == len(steps)  # exactly once each
    assert [got[t].count for t in (5, 7, 9)] == [5, len(second), 4]
    with open(os.path.join(d.export, "log"), "rb") as f:
        assert f.read() == b"same\n" + second + b"end\n"
    assert d.stop() == {0: 0, 1: 0}
    assert d.ds.ring_counters(1)["resumed_total"] == 1
