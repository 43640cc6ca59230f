"""Property and golden-vector tests of the sans-IO 9P2000.L codec (xen9p_common.p9); the .u
messages share these properties (their own golden vectors: test_p9_codec_u.py).

Strategies are derived from each message's declared FIELDS, so a new message type is covered automatically.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from xen9p_common.errors import DecodeError
from xen9p_common.p9 import messages as m
from xen9p_common.p9 import wire
from xen9p_common.p9.dirent import Dirent, pack_dirent, unpack_dirents
from xen9p_common.p9.stat import StatRecord
from xen9p_common.p9.stream import FrameBuffer
from xen9p_common.p9.wire import Qid

# --- strategies built from FIELDS -------------------------------------------

_utf8_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
# Names that are not valid UTF-8 must survive too (surrogate escapes).
_raw_text = st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))
_str = st.one_of(_utf8_text, _raw_text)
_qid = st.builds(Qid, st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 2**64 - 1))
_u16, _u32, _u64 = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 2**64 - 1)
stat_record = st.builds(StatRecord, _u16, _u32, _qid, _u32, _u32, _u32, _u64, _str, _str, _str, _str, _str,
                        _u32, _u32, _u32)

FIELD_STRATEGIES = {
    "U8": st.integers(0, 0xFF),
    "U16": st.integers(0, 0xFFFF),
    "U32": st.integers(0, 0xFFFFFFFF),
    "U64": st.integers(0, 2**64 - 1),
    "Qid": _qid,
    "Str": _str,
    "Data": st.binary(max_size=300),
    "StrArray": st.lists(_str, max_size=wire.MAXWELEM).map(tuple),
    "QidArray": st.lists(_qid, max_size=wire.MAXWELEM).map(tuple),
    "Stat": stat_record,
}


def strategy_for(cls):
    kwargs = {name: FIELD_STRATEGIES[ftype.name] for name, ftype in cls.FIELDS}
    return st.builds(cls, tag=st.integers(0, 0xFFFF), **kwargs)


any_message = st.one_of(*[strategy_for(cls) for cls in m.REGISTRY])


def test_every_field_type_has_a_strategy():
    for cls in m.REGISTRY:
        for name, ftype in cls.FIELDS:
            assert ftype.name in FIELD_STRATEGIES, (cls.__name__, name)


@pytest.mark.parametrize("cls", m.REGISTRY, ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_message(cls, data):
    msg = data.draw(strategy_for(cls))
    frame = m.encode(msg)
    size, mtype, tag = m.peek_header(frame)
    assert size == len(frame) and mtype == cls.TYPE and tag == msg.tag
    back = m.decode(frame)
    assert type(back) is cls
    assert back == msg
    assert m.encode(back) == frame


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_decode_error(raw):
    try:
        m.decode(raw)
    except DecodeError as e:
        assert isinstance(e.errno, int)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(m.REGISTRY), st.integers(0, 0xFFFF), st.binary(max_size=120))
def test_random_bodies_with_a_valid_header_only_raise_decode_error(cls, tag, body):
    frame = m.HEADER.pack(m.HEADER_SIZE + len(body), cls.TYPE, tag) + body
    try:
        msg = m.decode(frame)
    except DecodeError:
        return
    assert m.encode(msg) == frame  # whatever decodes must re-encode to the same bytes


@settings(max_examples=200, deadline=None)
@given(any_message, st.integers(1, 30))
def test_truncated_or_padded_frames_raise_decode_error(msg, cut):
    frame = m.encode(msg)
    short = frame[: max(0, len(frame) - cut)]
    with pytest.raises(DecodeError):
        m.decode(short)
    # A size field that lies about the length, either way, is refused.
    with pytest.raises(DecodeError):
        m.decode(frame + b"\0" * cut)


def test_unknown_type_is_eopnotsupp():
    import errno
    with pytest.raises(DecodeError) as ei:
        m.decode(m.HEADER.pack(7, 106, 1))  # Tcreate of 9P2000 is not .L
    assert ei.value.errno == errno.EOPNOTSUPP


def test_walk_arrays_over_16_are_refused():
    body = struct.pack("<IIH", 1, 2, 17) + b"\x01\x00a" * 17
    with pytest.raises(DecodeError):
        m.decode(m.HEADER.pack(7 + len(body), m.Twalk.TYPE, 1) + body)
    with pytest.raises(ValueError):
        m.encode(m.Twalk(1, 1, 2, ("a",) * 17))


# --- framing ----------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(any_message, min_size=1, max_size=6))
def test_framebuffer_whole_bytewise_and_trailing(msgs):
    frames = [m.encode(x) for x in msgs]
    stream = b"".join(frames)

    whole = FrameBuffer()
    whole.feed(stream)
    assert list(whole.frames()) == frames
    assert whole.pending() == 0

    bytewise = FrameBuffer()
    got = []
    for i in range(len(stream)):
        bytewise.feed(stream[i:i + 1])
        got.extend(bytewise.frames())
    assert got == frames
    assert bytewise.pending() == 0

    trailing = FrameBuffer()
    tail = frames[0][: len(frames[0]) - 1]
    trailing.feed(stream + tail)
    assert list(trailing.frames()) == frames
    assert trailing.pending() == len(tail)  # the incomplete frame is kept, not yielded
    trailing.feed(frames[0][-1:])
    assert list(trailing.frames()) == [frames[0]]


def test_framebuffer_refuses_bad_sizes():
    fb = FrameBuffer(max_size=100)
    fb.feed(struct.pack("<I", 3) + b"xxx")
    with pytest.raises(DecodeError):
        list(fb.frames())
    fb = FrameBuffer(max_size=100)
    fb.feed(struct.pack("<I", 101))
    with pytest.raises(DecodeError):
        list(fb.frames())


# --- golden vectors, written by hand from the 9P2000.L wire formats ---------------

GOLDEN = [
    # size[4] Tversion tag[2]=NOTAG msize[4] version[s]
    (m.Tversion(0xFFFF, 8192, "9P2000.L"),
     "15000000" "64" "ffff" "00200000" "0800" + "9P2000.L".encode().hex()),
    (m.Rversion(0xFFFF, 65536, "9P2000.L"),
     "15000000" "65" "ffff" "00000100" "0800" + "9P2000.L".encode().hex()),
    # Tattach fid afid=NOFID uname aname n_uname
    (m.Tattach(1, 0, 0xFFFFFFFF, "root", "/x", 0),
     "1d000000" "68" "0100" "00000000" "ffffffff" "0400" "726f6f74" "0200" "2f78" "00000000"),
    # Twalk fid newfid nwname wname*
    (m.Twalk(1, 1, 2, ("a", "bc")),
     "18000000" "6e" "0100" "01000000" "02000000" "0200" "0100" "61" "0200" "6263"),
    (m.Rwalk(1, (Qid(0x80, 0, 5),)),
     "16000000" "6f" "0100" "0100" "80" "00000000" "0500000000000000"),
    # Tlcreate fid name flags mode gid
    (m.Tlcreate(3, 5, "f", 0o102, 0o644, 1000),
     "1a000000" "0e" "0300" "05000000" "0100" "66" "42000000" "a4010000" "e8030000"),
    (m.Rlerror(9, 2), "0b000000" "07" "0900" "02000000"),
    (m.Tread(4, 7, 0x100000000, 4096),
     "17000000" "74" "0400" "07000000" "0000000001000000" "00100000"),
    (m.Rread(4, b"hi"), "0d000000" "75" "0400" "02000000" "6869"),
    (m.Tflush(5, 4), "09000000" "6c" "0500" "0400"),
    (m.Rclunk(6, ), "07000000" "79" "0600"),
    (m.Tunlinkat(2, 1, "d", 0x200), "12000000" "4c" "0200" "01000000" "0100" "64" "00020000"),
]


@pytest.mark.parametrize("msg,hexframe", GOLDEN, ids=lambda x: type(x).__name__ if isinstance(x, m.Message) else "")
def test_golden_vectors(msg, hexframe):
    frame = bytes.fromhex(hexframe)
    assert m.encode(msg) == frame
    assert m.decode(frame) == msg


def test_golden_rgetattr():
    # valid[8] qid[13] mode[4] uid[4] gid[4] nlink[8] rdev[8] size[8] blksize[8] blocks[8]
    # atime, mtime, ctime, btime as sec[8] nsec[8]; gen[8] data_version[8]: 153 bytes of body.
    body = (bytes.fromhex("ff07000000000000") + bytes.fromhex("00" "01000000" "2a00000000000000")
            + bytes.fromhex("a4810000" "e8030000" "e9030000") + bytes.fromhex("0100000000000000")
            + bytes(8) + bytes.fromhex("0010000000000000") + bytes.fromhex("0010000000000000")
            + bytes.fromhex("0800000000000000") + bytes.fromhex("0100000000000000") + bytes(8)
            + bytes.fromhex("0200000000000000") + bytes(8) + bytes.fromhex("0300000000000000") + bytes(8)
            + bytes(16) + bytes(8) + bytes(8))
    assert len(body) == 153
    frame = struct.pack("<IBH", 7 + len(body), 25, 0x10) + body
    msg = m.decode(frame)
    assert msg == m.Rgetattr(0x10, 0x7FF, Qid(0, 1, 42), 0o100644, 1000, 1001, 1, 0, 4096, 4096, 8,
                             1, 0, 2, 0, 3, 0, 0, 0, 0, 0)
    assert m.encode(msg) == frame


def test_golden_rreaddir():
    # Each entry: qid[13] offset[8] type[1] name[s]
    ent = bytes.fromhex("80" "00000000" "0700000000000000" "ffffffffffffff7f" "04" "0200" "6162")
    frame = struct.pack("<IBHI", 7 + 4 + len(ent), 41, 3, len(ent)) + ent
    msg = m.decode(frame)
    assert isinstance(msg, m.Rreaddir)
    assert list(unpack_dirents(msg.data)) == [Dirent(Qid(0x80, 0, 7), 2**63 - 1, 4, "ab")]
    out = bytearray()
    pack_dirent(out, Qid(0x80, 0, 7), 2**63 - 1, 4, b"ab")
    assert bytes(out) == ent and len(ent) == 24 + 2


def test_truncated_dirents_raise_decode_error():
    out = bytearray()
    pack_dirent(out, Qid(0, 0, 1), 1, 8, b"name")
    for cut in range(1, len(out)):
        with pytest.raises(DecodeError):
            list(unpack_dirents(bytes(out[:cut])))


# --- registry and reprs -----------------------------------------------------

def test_registry_has_no_duplicates_and_r_is_t_plus_one():
    types = [cls.TYPE for cls in m.REGISTRY]
    names = [cls.__name__ for cls in m.REGISTRY]
    assert len(set(types)) == len(types)
    assert len(set(names)) == len(names)
    by_name = {cls.__name__: cls for cls in m.REGISTRY}
    for cls in m.REGISTRY:
        if cls.__name__ in ("Rlerror", "Rerror"):  # errors answer any request
            assert cls.TYPE in (7, 107)
            continue
        other = ("R" if cls.__name__[0] == "T" else "T") + cls.__name__[1:]
        assert other in by_name, f"{cls.__name__} has no {other}"
        if cls.__name__[0] == "R":
            assert cls.TYPE == by_name[other].TYPE + 1
            assert cls.TYPE % 2 == 1
        else:
            assert cls.TYPE % 2 == 0
    assert m.BY_TYPE == {cls.TYPE: cls for cls in m.REGISTRY}


def test_registry_covers_every_linux_message():
    wanted = {"version", "auth", "attach", "flush", "walk", "read", "write", "clunk", "remove",
              "statfs", "lopen", "lcreate", "symlink", "mknod", "rename", "readlink", "getattr",
              "setattr", "xattrwalk", "xattrcreate", "readdir", "fsync", "lock", "getlock", "link",
              "mkdir", "renameat", "unlinkat"}
    names = {cls.__name__ for cls in m.REGISTRY}
    for w in wanted:
        assert "T" + w in names and "R" + w in names, w


def test_reprs_truncate_big_payloads():
    big = b"\xAA" * 100_000
    for msg in (m.Rread(1, big), m.Twrite(1, 2, 0, big), m.Rreaddir(1, big)):
        r = repr(msg)
        assert len(r) < 200 and "100000 bytes" in r
    r = repr(m.Tsymlink(1, 2, "n", "t" * 5000, 0))
    assert len(r) < 300
    assert repr(m.Tclunk(3, 9)).startswith("Tclunk(tag=3")


def test_messages_are_frozen():
    msg = m.Tclunk(1, 2)
    with pytest.raises(Exception):
        msg.fid = 3
