"""qid.path on an export that contains other mounts: one number per inode on every ring and across restarts.

Linux spreads one mount over all rings, so the rings must number host devices alike.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from xen9p_common.p9 import messages as M

from .ring_worker_harness import Device
from .test_ring_worker import O_RDWR, attach, ok, version


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def mounted(tmp_path):
    """export/{a,b}: two tmpfs mounts; export/c: a bind mount of export/a/sub (same device as a)."""
    if os.geteuid() != 0:
        pytest.skip("mounting tmpfs inside the export needs root")
    export = tmp_path / "export"
    for d in ("a", "b", "c"):
        (export / d).mkdir(parents=True)
    done = []
    try:
        for d in ("a", "b"):
            _mount("-t", "tmpfs", "-o", "size=1m", "xen9p-test", str(export / d))
            done.append(export / d)
        (export / "a" / "sub").mkdir()
        (export / "a" / "sub" / "f").write_text("in a")
        (export / "b" / "f").write_text("in b")
        _mount("--bind", str(export / "a" / "sub"), str(export / "c"))
        done.append(export / "c")
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        for p in reversed(done):
            subprocess.run(["umount", "-l", str(p)], capture_output=True)
        pytest.skip(f"cannot mount tmpfs here: {getattr(e, 'stderr', e)!r}")
    assert os.stat(export / "a").st_ino == os.stat(export / "b").st_ino  # tmpfs roots: the clash to avoid
    yield str(export)
    for p in reversed(done):
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


@pytest.fixture
def device(tmp_path, mounted):
    d = Device(tmp_path / "dev", num_rings=2, order=1, export=mounted)
    yield d
    d.close()


def _qids(d: Device, ring: int, names: list[str], base_fid: int) -> dict[str, int]:
    """Walk each name from the root on `ring` (tags of that ring's parity); qid.path of the last element."""
    out = {}
    for k, name in enumerate(names):
        tag = 2 * (base_fid + k) + ring
        r = ok(d, M.Twalk(tag, 0, base_fid + k, name.split("/")), M.Rwalk)
        out[name] = r.wqids[-1].path
        ok(d, M.Tclunk(tag + 2, base_fid + k), M.Rclunk)
    return out


def test_rings_and_a_restarted_worker_number_mounts_alike(device):
    d = device
    d.start()
    version(d, 8192)
    attach(d)
    names = ["a", "b", "c", "a/sub", "b/f", "c/f", "a/sub/f"]
    ring0 = _qids(d, 0, names, 10)
    ring1 = _qids(d, 1, names[::-1], 30)
    assert ring0 == ring1
    assert ring0["a"] != ring0["b"] and ring0["c"] == ring0["a/sub"] and ring0["c/f"] == ring0["a/sub/f"]
    assert ring0["b/f"] != ring0["a/sub/f"]
    assert d.kill(1) == -9
    d.start(1)
    assert _qids(d, 1, ["b/f", "c", "b", "a"], 50) == {k: ring0[k] for k in ("b/f", "c", "b", "a")}


def test_open_unlink_across_rings_inside_a_mount(device):
    d = device
    d.start()
    version(d, 8192)
    attach(d)
    _qids(d, 1, ["b", "a"], 10)  # ring 1 meets b's device first, ring 0 meets a's first
    ok(d, M.Twalk(0, 0, 7, ["a"]), M.Rwalk)
    ok(d, M.Tlcreate(2, 7, "gone", O_RDWR, 0o644, 0), M.Rlcreate)  # ring 0 holds the fd
    ok(d, M.Twrite(4, 7, 0, b"still here"), M.Rwrite)
    ok(d, M.Twalk(6, 0, 8, ["a"]), M.Rwalk)
    ok(d, M.Tunlinkat(8, 8, "gone", 0), M.Runlinkat)
    assert not os.path.exists(os.path.join(d.export, "a", "gone"))
    assert ok(d, M.Tread(1, 7, 0, 100)).data == b"still here"  # ring 1 reaches ring 0's file
    ok(d, M.Twrite(3, 7, 10, b"!"), M.Rwrite)
    assert ok(d, M.Tread(10, 7, 0, 100)).data == b"still here!"
