"""9P2000.u codec: golden vectors written by hand from the .u wire formats, the stat record's
strict decoding, and directory-read streams of whole records."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from xen9p_common.errors import DecodeError
from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as m
from xen9p_common.p9.stat import (STAT_DONT_TOUCH, STAT_FIXED, StatRecord, pack_stat, stat_size, unpack_stat,
                                  unpack_stats)
from xen9p_common.p9.wire import Qid

from .test_p9_codec import stat_record

REC = StatRecord(0, 0, Qid(0x80, 3, 9), C.DMDIR | 0o755, 10, 20, 0, "d", "root", "root", "", "", 0, 0,
                 0xFFFFFFFF)
# size[2]=70 (61 + "d" + "root" + "root") type dev qid mode atime mtime length name uid gid muid ext n_*
REC_HEX = ("4600" "0000" "00000000" "80" "03000000" "0900000000000000" "ed010080" "0a000000" "14000000"
           "0000000000000000" "0100" "64" "0400" "726f6f74" "0400" "726f6f74" "0000" "0000"
           "00000000" "00000000" "ffffffff")

GOLDEN_U = [
    (m.Tversion(3, 16384, "9P2000.u"), "15000000" "64" "0300" "00400000" "0800" + b"9P2000.u".hex()),
    (m.Rerror(4, "No such file or directory", 2),
     "26000000" "6b" "0400" "1900" + b"No such file or directory".hex() + "02000000"),
    (m.Topen(5, 7, C.ORDWR | C.OTRUNC), "0c000000" "70" "0500" "07000000" "12"),
    (m.Ropen(5, Qid(0, 1, 2), 8168), "18000000" "71" "0500" "00" "01000000" "0200000000000000" "e81f0000"),
    # Tcreate fid name perm mode extension (a hard link to fid 9)
    (m.Tcreate(6, 1, "l", C.DMLINK | 0o644, C.OREAD, "9\n"),
     "17000000" "72" "0600" "01000000" "0100" "6c" "a4010001" "00" "0200" "390a"),
    (m.Rcreate(6, Qid(0, 0, 5), 0), "18000000" "73" "0600" "00" "00000000" "0500000000000000" "00000000"),
    (m.Tstat(7, 1), "0b000000" "7c" "0700" "01000000"),
    (m.Rstat(7, REC), "51000000" "7d" "0700" "4800" + REC_HEX),
    (m.Twstat(8, 2, REC), "55000000" "7e" "0800" "02000000" "4800" + REC_HEX),
    (m.Rwstat(8), "07000000" "7f" "0800"),
]


@pytest.mark.parametrize("msg,hexframe", GOLDEN_U, ids=lambda x: type(x).__name__ if isinstance(x, m.Message) else "")
def test_golden_vectors_u(msg, hexframe):
    frame = bytes.fromhex(hexframe)
    assert m.encode(msg) == frame
    assert m.decode(frame) == msg


def test_stat_size_is_61_plus_the_strings():
    assert STAT_FIXED == 61
    assert stat_size(REC) == 2 + 61 + 1 + 4 + 4
    assert bytes(pack_stat(REC)) == bytes.fromhex(REC_HEX)


def test_dont_touch_record_is_all_ones_and_empty_strings():
    raw = bytes(pack_stat(STAT_DONT_TOUCH))
    assert raw[2:2 + 39] == b"\xff" * 39  # type dev qid mode atime mtime length
    assert raw[41:51] == b"\0" * 10 and raw[51:] == b"\xff" * 12


@settings(max_examples=200, deadline=None)
@given(st.lists(stat_record, max_size=5))
def test_directory_stream_round_trip(recs):
    data = bytearray()
    for r in recs:
        pack_stat(r, data)
    assert list(unpack_stats(bytes(data))) == recs


@settings(max_examples=200, deadline=None)
@given(stat_record, st.data())
def test_truncated_stat_stream_is_refused(rec, data):
    raw = bytes(pack_stat(rec))
    cut = data.draw(st.integers(1, len(raw) - 1))
    with pytest.raises(DecodeError):
        list(unpack_stats(raw[:cut]))


def _rstat_frame(n: int, rec: bytes) -> bytes:
    body = struct.pack("<H", n) + rec
    return m.HEADER.pack(7 + len(body), m.Rstat.TYPE, 1) + body


def test_stat_with_a_wrong_inner_size_is_refused():
    rec = bytearray.fromhex(REC_HEX)
    struct.pack_into("<H", rec, 0, 64)  # one short of what the fields span
    with pytest.raises(DecodeError):
        unpack_stat(bytes(rec))
    with pytest.raises(DecodeError):
        m.decode(_rstat_frame(len(rec), bytes(rec)))


def test_stat_n_that_disagrees_with_the_record_is_refused():
    rec = bytes.fromhex(REC_HEX)
    with pytest.raises(DecodeError):
        m.decode(_rstat_frame(len(rec) - 1, rec[:-1] + b""))  # n covers less than the record
    with pytest.raises(DecodeError):
        m.decode(_rstat_frame(len(rec) + 1, rec + b"\0"))  # n covers one stray byte


def test_stat_string_past_the_record_is_refused():
    rec = bytearray.fromhex(REC_HEX)
    struct.pack_into("<H", rec, 41, 200)  # name length far past the record
    with pytest.raises(DecodeError):
        unpack_stat(bytes(rec))


def test_short_stat_record_is_refused():
    for cut in (0, 1, 2, 10, 40):
        with pytest.raises(DecodeError):
            unpack_stat(bytes.fromhex(REC_HEX)[:cut])
