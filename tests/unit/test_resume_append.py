"""ring_resume's search for an O_APPEND Twrite's data past the size its journal record noted."""
from __future__ import annotations

import os

import pytest

from xen9p_worker.ring_resume import _found_past

MIB = 1 << 20


@pytest.fixture
def fd(tmp_path):
    fd = os.open(tmp_path / "log", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    yield fd
    os.close(fd)


@pytest.mark.parametrize("at", [0, 7, MIB - 3, MIB, 2 * MIB - 1])
def test_data_is_found_wherever_it_landed_past_the_noted_size_also_across_read_chunks(fd, at):
    data = b"<record 42>"
    os.write(fd, b"x" * at + data + b"y" * 100)
    assert _found_past(fd, data, 0)
    assert _found_past(fd, data, at)
    assert not _found_past(fd, data, at + 1)  # an append of the same bytes before the noted size is not ours


def test_a_large_append_is_found_and_an_absent_one_is_not(fd):
    data = os.urandom(3 * MIB)
    os.write(fd, b"h" * 12345 + data)
    assert _found_past(fd, data, 100)
    assert not _found_past(fd, os.urandom(64), 0)
    assert not _found_past(fd, data, 12346)


def test_nothing_past_the_end(fd):
    os.write(fd, b"abc")
    assert not _found_past(fd, b"abc", 3)
    assert not _found_past(fd, b"c", 10)
