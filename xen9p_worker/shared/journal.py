"""Per-ring journal of requests in flight, in the device segment: crash resumption and Tflush across rings.

One writer per ring (its live worker); other rings only read it (to wait for a flushed tag).
"""
from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

from . import layout as L

# Record: state u8 | mtype u8 | tag u16 | req_index u32 | req_size u32 | reply_pos u32
#         | reply_len u32 | stored_len u16 | pad u16 | note u64 ... reply bytes @32 (480)
# note: 0, or 1 + a fact the handler recorded before a non-idempotent host call (the size an
# O_APPEND file had before a Twrite), so that a successor can tell whether the call happened.
_REC = struct.Struct("<BBHIIIIHHQ")
REPLY_OFF = 32
REPLY_MAX = L.JOURNAL_REC_SIZE - REPLY_OFF

FREE = 0
STARTED = 1     # taken off the ring, being served (re-run it after a crash)
DONE = 2        # served; reply bytes stored when small (resend them, never re-run)
REPLYING = 3    # reply being written at reply_pos: published iff the page's in_prod passed it
PUBLISHED = 4   # reply visible to the guest; the record lives until out_cons passes the request
STATE_NAMES = {FREE: "free", STARTED: "started", DONE: "done", REPLYING: "replying", PUBLISHED: "published"}

# Ring header: worker pid u32 | pad | scans u64 | kick request u64 | kick ack u64
# | (64..127 counters, see device_state) | cancel mailbox: count u32 + 8 x (tag + 1) u32
RH_PID = 0
RH_SCANS = 8
RH_KICK_REQ = 16
RH_KICK_ACK = 24
RH_CANCEL = 128
CANCEL_SLOTS = 8
_M32 = 0xFFFFFFFF


@dataclass
class Record:
    slot: int
    state: int
    mtype: int
    tag: int
    req_index: int
    req_size: int
    reply_pos: int
    reply_len: int
    stored: bytes
    note: int = 0  # 0: nothing noted; else 1 + the value noted before applying (see note())

    def published_by(self, in_prod: int) -> bool:
        """Was the reply wholly published, given the page's in_prod (u32 modular order)?"""
        if self.state == PUBLISHED:
            return True
        if self.state != REPLYING:
            return False
        end = (self.reply_pos + self.reply_len) & _M32
        return ((in_prod - end) & _M32) < (1 << 31)


class RingJournal:
    """The journal of one ring: `journal_slots` records plus a small header."""

    def __init__(self, buf: memoryview, lay: L.Layout, ring: int) -> None:
        if not 0 <= ring < lay.num_rings:
            raise ValueError(f"ring {ring} outside 0..{lay.num_rings - 1}")
        self._buf = buf
        self.ring = ring
        self.slots = lay.journal_slots
        self._base = lay.ring_off(ring)
        self._recs = self._base + L.RING_HEADER_SIZE
        self._mu = threading.Lock()
        self._free: list[int] | None = None

    def _off(self, slot: int) -> int:
        return self._recs + slot * L.JOURNAL_REC_SIZE

    # -- header ---------------------------------------------------------------------

    def set_pid(self, pid: int) -> None:
        L.U32.pack_into(self._buf, self._base + RH_PID, pid)

    def pid(self) -> int:
        return L.U32.unpack_from(self._buf, self._base + RH_PID)[0]

    def scans(self) -> int:
        return L.U64.unpack_from(self._buf, self._base + RH_SCANS)[0]

    def bump_scans(self) -> None:
        L.U64.pack_into(self._buf, self._base + RH_SCANS, self.scans() + 1)

    # Another ring's Tflush asks this ring's worker to finish a drain pass that started
    # after the request (kick) and to withdraw a request it may hold (cancel mailbox).
    # Both are written under the device mutex by the asking worker.

    def request_kick(self) -> int:
        v = L.U64.unpack_from(self._buf, self._base + RH_KICK_REQ)[0] + 1
        L.U64.pack_into(self._buf, self._base + RH_KICK_REQ, v)
        return v

    def kick_requested(self) -> int:
        return L.U64.unpack_from(self._buf, self._base + RH_KICK_REQ)[0]

    def ack_kick(self, value: int) -> None:
        L.U64.pack_into(self._buf, self._base + RH_KICK_ACK, value)

    def kick_acked(self) -> int:
        return L.U64.unpack_from(self._buf, self._base + RH_KICK_ACK)[0]

    def post_cancel(self, tag: int) -> bool:
        off = self._base + RH_CANCEL
        for i in range(CANCEL_SLOTS):
            o = off + 4 + 4 * i
            if L.U32.unpack_from(self._buf, o)[0] == 0:
                L.U32.pack_into(self._buf, o, tag + 1)
                L.U32.pack_into(self._buf, off, L.U32.unpack_from(self._buf, off)[0] + 1)
                return True
        return False

    def cancels_waiting(self) -> bool:
        return L.U32.unpack_from(self._buf, self._base + RH_CANCEL)[0] != 0

    def take_cancels(self) -> list[int]:
        off = self._base + RH_CANCEL
        tags = []
        for i in range(CANCEL_SLOTS):
            o = off + 4 + 4 * i
            v = L.U32.unpack_from(self._buf, o)[0]
            if v:
                tags.append(v - 1)
                L.U32.pack_into(self._buf, o, 0)
        L.U32.pack_into(self._buf, off, 0)
        return tags

    # -- writer side (the ring's worker) ----------------------------------------------

    def adopt(self) -> list[Record]:
        """Take over the journal (new or restarted worker): the records a predecessor left."""
        recs = self.records()
        with self._mu:
            used = {r.slot for r in recs}
            self._free = [s for s in range(self.slots - 1, -1, -1) if s not in used]
        return recs

    def free_slots(self) -> int:
        return len(self._free or ())

    def start(self, index: int, size: int, tag: int, mtype: int) -> int:
        """Record a request taken off the ring; returns its slot, or -1 when the journal is full."""
        with self._mu:
            if not self._free:
                return -1
            slot = self._free.pop()
        off = self._off(slot)
        # Fields first, state last: a reader never sees a live record with stale fields.
        _REC.pack_into(self._buf, off, FREE, mtype, tag, index & _M32, size, 0, 0, 0, 0, 0)
        self._buf[off] = STARTED
        return slot

    def restart(self, slot: int) -> None:
        """A successor re-runs a request it found STARTED (or not stored): back to STARTED."""
        off = self._off(slot)
        struct.pack_into("<H", self._buf, off + 20, 0)
        self._buf[off] = STARTED

    def note(self, slot: int, value: int) -> None:
        """Before a non-idempotent host call: a fact a successor needs to tell whether it happened."""
        L.U64.pack_into(self._buf, self._off(slot) + 24, value + 1)

    def done(self, slot: int, reply: bytes | None) -> None:
        """The request was served; keep `reply` when it fits (it is resent, never recomputed)."""
        off = self._off(slot)
        if reply is not None and len(reply) <= REPLY_MAX:
            self._buf[off + REPLY_OFF:off + REPLY_OFF + len(reply)] = reply
            struct.pack_into("<H", self._buf, off + 20, len(reply))
        else:
            struct.pack_into("<H", self._buf, off + 20, 0)
        self._buf[off] = DONE

    def replying(self, slot: int, pos: int, length: int) -> None:
        """Written before the reply's bytes become visible, so a successor can compare with in_prod."""
        off = self._off(slot)
        struct.pack_into("<II", self._buf, off + 12, pos & _M32, length)
        self._buf[off] = REPLYING

    def published(self, slot: int) -> None:
        self._buf[self._off(slot)] = PUBLISHED

    def release(self, slot: int) -> None:
        self._buf[self._off(slot)] = FREE
        with self._mu:
            if self._free is not None:
                self._free.append(slot)

    # -- readers (any process) -------------------------------------------------------

    def record(self, slot: int) -> Record:
        off = self._off(slot)
        state, mtype, tag, idx, size, pos, rlen, slen, _, note = _REC.unpack_from(self._buf, off)
        stored = bytes(self._buf[off + REPLY_OFF:off + REPLY_OFF + min(slen, REPLY_MAX)])
        return Record(slot, state, mtype, tag, idx, size, pos, rlen, stored, note)

    def records(self) -> list[Record]:
        out = []
        for s in range(self.slots):
            if self._buf[self._off(s)] != FREE:
                out.append(self.record(s))
        return out

    def tag_pending(self, tag: int) -> bool:
        """Is a request with `tag` taken and not yet answered on this ring?"""
        buf = self._buf
        for s in range(self.slots):
            off = self._off(s)
            st = buf[off]
            if st in (STARTED, DONE, REPLYING) and struct.unpack_from("<H", buf, off + 2)[0] == tag:
                return True
        return False
