"""DirReader.pack against a per-entry reference: same bytes, never over `count`, resumable by cookie.

Small getdents buffers force several batches per call; hidden names and the qid.path fallback are covered.
"""
from __future__ import annotations

import os

import pytest

from xen9p_common.p9 import Qid, pack_dirent, unpack_dirents
from xen9p_worker.backend.dirents import DirReader

_QT = {4: 0x80, 10: 0x02}


def _reference(reader, fd, offset, count, qpath, hidden, mapped):
    out = bytearray()
    while True:
        ents = reader.read(fd, offset)
        if not ents:
            return bytes(out)
        for ino, doff, dtype, name in ents:
            if hidden is not None and hidden(name):
                offset = doff
                continue
            if len(out) + 24 + len(name) > count:
                return bytes(out)
            qtype = _QT.get(dtype, 0)
            if mapped and dtype != 4:
                dtype, qtype = 0, 0
            pack_dirent(out, Qid(qtype, 0, qpath(ino)), doff, dtype, name)
            offset = doff


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    d = tmp_path_factory.mktemp("dirents")
    for i in range(300):
        name = "n" * (1 + i % 50) + str(i)
        if i % 7 == 0:
            os.mkdir(d / name)
        elif i % 11 == 0:
            os.symlink("target", d / name)
        else:
            (d / name).write_bytes(b"")
    (d / ".hideme").write_bytes(b"")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize("bufsize", [512, 4096, 65536])
@pytest.mark.parametrize("mode", ["plain", "hidden+mapped", "fallback"])
def test_pack_matches_reference_for_every_count(tree, bufsize, mode):
    hidden = (lambda n: n == b".hideme") if mode == "hidden+mapped" else None
    mapped = mode == "hidden+mapped"
    base = None if mode == "fallback" else 0
    qpath = (lambda ino: ino ^ 0x5A5A) if mode == "fallback" else (lambda ino: ino)
    reader = DirReader(bufsize)
    names = set()
    for count in (0, 23, 24, 40, 100, 999, 4096, 1 << 20):
        offset = 0
        while True:
            got = reader.pack(tree, offset, count, base, qpath, hidden, mapped)
            want = _reference(reader, tree, offset, count, qpath, hidden, mapped)
            assert got == want
            assert len(got) <= count
            if not got:
                break
            ents = list(unpack_dirents(got))
            names.update(e.name for e in ents)
            offset = ents[-1].offset
    assert len(names) == 303 - (1 if hidden else 0)  # 301 made, with . and ..
