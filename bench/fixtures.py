"""The exported tree every target serves: a small file, a create directory, a big directory, a data file.

Built once per run on the host; the data file is read once so every Tread is served from the page cache.
"""
from __future__ import annotations

import os
from pathlib import Path

from .profile import Profile

KiB = 1024


def build_export(export: Path, profile: Profile) -> dict:
    """Create the tree; returns the op parameters (paths relative to the export root)."""
    (export / "small" / "creates").mkdir(parents=True)
    (export / "small" / "file").write_bytes(b"s" * 4096)
    big = export / "big"
    big.mkdir()
    for i in range(profile.readdir_entries):
        # Empty files: creating 10,000 of them takes well under a second.
        os.close(os.open(big / f"entry-{i:05d}", os.O_CREAT | os.O_WRONLY, 0o644))
    (export / "wr").mkdir()
    data = export / "data"
    data.mkdir()
    size = profile.read_file_mb << 20
    block = os.urandom(1 << 20)
    with open(data / "file", "wb") as f:
        for _ in range(profile.read_file_mb):
            f.write(block)
    warm_page_cache(data / "file")
    return {
        "small_file": "small/file",
        "create_dir": "small/creates",
        "big_dir": "big",
        "big_entries": profile.readdir_entries + 2,  # with . and ..
        "data_file": "data/file",
        "data_size": size,
        "write_dir": "wr",
        "write_span": profile.write_span_kb * KiB,
    }


def warm_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(1 << 20)
        while os.readv(fd, [buf]):
            pass
    finally:
        os.close(fd)


def op_params(fx: dict, op: str, size: int, msize: int) -> dict:
    """The parameters one op reads from (see bench/ops.py)."""
    if op in ("getattr", "walkclunk"):
        return {"file": fx["small_file"]}
    if op == "createwriteunlink":
        return {"dir": fx["create_dir"]}
    if op == "readdir":
        return {"dir": fx["big_dir"], "msize": msize}
    if op == "read":
        return {"file": fx["data_file"], "size": size, "file_size": fx["data_size"]}
    if op == "write":
        return {"dir": fx["write_dir"], "size": size, "file_size": max(fx["write_span"], size)}
    raise ValueError(op)
