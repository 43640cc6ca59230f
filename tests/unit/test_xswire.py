"""Unit tests of the xenstore wire codec: header, framing, errno names, path rules."""
from __future__ import annotations

import errno

import pytest
from hypothesis import given, strategies as st

from xen9p_common.errors import XenStoreError
from xen9p_common.platform.xswire import (ERROR_NAMES, HEADER, PAYLOAD_MAX, FrameReader, WireError, XsMessage,
                                          XsType, check_path, errno_from_name, errno_name, pack_message,
                                          path_error, split_strings)


def test_type_numbers_match_xs_wire_h():
    expected = {"DIRECTORY": 1, "READ": 2, "GET_PERMS": 3, "WATCH": 4, "UNWATCH": 5, "TRANSACTION_START": 6,
                "TRANSACTION_END": 7, "INTRODUCE": 8, "RELEASE": 9, "GET_DOMAIN_PATH": 10, "WRITE": 11,
                "MKDIR": 12, "RM": 13, "SET_PERMS": 14, "WATCH_EVENT": 15, "ERROR": 16,
                "IS_DOMAIN_INTRODUCED": 17, "RESUME": 18, "SET_TARGET": 19, "RESET_WATCHES": 21,
                "DIRECTORY_PART": 22}
    assert {t.name: t.value for t in XsType if t.name != "DEBUG"} == expected
    assert len({t.value for t in XsType}) == len(XsType)


def test_header_is_16_bytes_little_endian():
    data = pack_message(XsType.READ, 7, 3, b"/a\0")
    assert HEADER.size == 16
    assert data[:16] == bytes([2, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0])
    assert data[16:] == b"/a\0"


def test_payload_limit():
    assert len(pack_message(XsType.WRITE, 1, 0, b"x" * PAYLOAD_MAX)) == 16 + PAYLOAD_MAX
    with pytest.raises(XenStoreError) as ei:
        pack_message(XsType.WRITE, 1, 0, b"x" * (PAYLOAD_MAX + 1))
    assert ei.value.errno == errno.E2BIG


def test_frame_reader_whole_bytewise_and_trailing():
    msgs = [XsMessage(XsType.WRITE, i, 0, b"/p\0v%d" % i) for i in range(3)]
    stream = b"".join(m.pack() for m in msgs)
    assert FrameReader().feed(stream) == msgs
    r = FrameReader()
    got = []
    for b in stream:
        got += r.feed(bytes([b]))
    assert got == msgs and r.pending == 0
    r = FrameReader()
    assert r.feed(stream + stream[:5]) == msgs and r.pending == 5


def test_frame_reader_rejects_oversized_length():
    with pytest.raises(WireError):
        FrameReader().feed(HEADER.pack(2, 1, 0, PAYLOAD_MAX + 1))


@given(st.integers(0, 30), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=200))
def test_pack_roundtrip(mtype, req_id, tx_id, payload):
    assert FrameReader().feed(pack_message(mtype, req_id, tx_id, payload)) == [
        XsMessage(mtype, req_id, tx_id, payload)]


def test_errno_names():
    assert errno_name(errno.ENOENT) == "ENOENT"
    assert errno_name(errno.ETIMEDOUT) == "EIO"  # not a xenstore error name
    assert errno_from_name("EAGAIN") == errno.EAGAIN
    assert errno_from_name("EWHATEVER") == errno.EINVAL  # libxenstore's fallback
    assert all(errno_from_name(n) == getattr(errno, n) for n in ERROR_NAMES)


@pytest.mark.parametrize("path", ["/", "/local/domain/0", "device/9pfs/0", "a-b_c@d", "/" + "a" * 3071])
def test_valid_paths(path):
    assert path_error(path) is None
    assert check_path(path) == path.encode()


@pytest.mark.parametrize("path", ["", "/a/", "/a//b", "/a b", "/a.b", "/é", "/" + "a" * 3072, "a" * 2049])
def test_invalid_paths(path):
    assert path_error(path)
    with pytest.raises(XenStoreError) as ei:
        check_path(path)
    assert ei.value.errno == errno.EINVAL


def test_watch_paths():
    assert path_error("@releaseDomain", watch=True) is None
    assert path_error("@introduceDomain", watch=True) is None
    assert path_error("@x y", watch=True)


def test_split_strings():
    assert split_strings(b"") == []
    assert split_strings(b"a\0b\0") == ["a", "b"]
    assert split_strings(b"a\0b") == ["a", "b"]


def test_message_repr_truncates():
    assert len(repr(XsMessage(XsType.WRITE, 1, 0, b"x" * 4000))) < 200
