"""A randomized multi-ring workload through the 9P client, checked against the same operations on a plain directory.

Lanes run concurrently (many requests in flight, fids used across rings); each lane owns a subdirectory.
"""
from __future__ import annotations

import os
import random
import threading

import pytest

from xen9p_sim.client.errors import P9Error
from xen9p_common.p9 import constants as C

from .ring_worker_harness import Device

LANES = 4
OPS_PER_LANE = 60


class Lane(threading.Thread):
    def __init__(self, root, model_dir: str, lane: int, seed: int) -> None:
        super().__init__(name=f"model-lane-{lane}", daemon=True)
        self.root = root
        self.name_ = f"lane{lane}"
        self.model = os.path.join(model_dir, self.name_)
        self.rng = random.Random(seed)
        self.failures: list[str] = []
        self.ops = 0

    def check(self, what: str, got, want) -> None:
        if got != want:
            self.failures.append(f"{self.name_} {what}: got {got!r:.80} want {want!r:.80}")

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:
            self.failures.append(f"{self.name_} crashed: {e!r}")

    def _run(self) -> None:
        rng = self.rng
        os.mkdir(self.model)
        self.root.mkdir(self.name_)
        d = self.root.walk([self.name_])
        files: list[str] = []
        for i in range(OPS_PER_LANE):
            op = rng.choice(["create", "write", "read", "read", "stat", "list", "rename", "unlink", "mkdir"])
            if op in ("write", "read", "stat", "rename", "unlink") and not files:
                op = "create"
            self.ops += 1
            if op == "create":
                name = f"f{i}"
                data = rng.randbytes(rng.randrange(0, 20000))
                f = d.create(name, C.L_O_RDWR)
                f.write(data, 0)
                f.clunk()
                with open(os.path.join(self.model, name), "wb") as m:
                    m.write(data)
                files.append(name)
            elif op == "write":
                name = rng.choice(files)
                off = rng.randrange(0, 30000)
                data = rng.randbytes(rng.randrange(1, 9000))
                f = d.walk([name]).open(C.L_O_RDWR)
                self.check(f"write {name}", f.write(data, off), len(data))
                f.clunk()
                with open(os.path.join(self.model, name), "r+b") as m:
                    m.seek(off)
                    m.write(data)
            elif op == "read":
                name = rng.choice(files)
                f = d.walk([name]).open(C.L_O_RDONLY)
                off = rng.randrange(0, 30000)
                n = rng.randrange(1, 40000)
                with open(os.path.join(self.model, name), "rb") as m:
                    m.seek(off)
                    want = m.read(n)
                got = b""
                while len(got) < n:
                    chunk = f.read_once(off + len(got), n - len(got))
                    if not chunk:
                        break
                    got += chunk
                self.check(f"read {name}@{off}+{n}", got, want)
                f.clunk()
            elif op == "stat":
                name = rng.choice(files)
                f = d.walk([name])
                self.check(f"size {name}", f.getattr().size, os.path.getsize(os.path.join(self.model, name)))
                f.clunk()
            elif op == "list":
                self.check("listdir", sorted(d.listdir()), sorted(os.listdir(self.model)))
            elif op == "rename":
                old = rng.choice(files)
                new = f"r{i}"
                d.renameat(old, d, new)
                os.rename(os.path.join(self.model, old), os.path.join(self.model, new))
                files[files.index(old)] = new
            elif op == "unlink":
                name = files.pop(rng.randrange(len(files)))
                d.unlink(name)
                os.unlink(os.path.join(self.model, name))
            elif op == "mkdir":
                name = f"d{i}"
                d.mkdir(name)
                os.mkdir(os.path.join(self.model, name))
            try:
                d.walk(["no-such-entry"])
                self.failures.append("walk to a missing name succeeded")
            except P9Error:
                pass
        d.clunk()


def _tree(root: str) -> dict[str, bytes | None]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames:
            out[os.path.join(rel, n)] = None
        for n in filenames:
            with open(os.path.join(dirpath, n), "rb") as f:
                out[os.path.join(rel, n)] = f.read()
    return out


@pytest.mark.parametrize("rings,order,seed", [(2, 1, 1), (2, 6, 2), (8, 4, 3)])
def test_random_workload_matches_local_directory(tmp_path, rings, order, seed):
    d = Device(tmp_path / "dev", num_rings=rings, order=order, max_fids=512)
    try:
        d.start()
        msize = min(65536 + 24, (1 << (order + 11)))
        client = d.connect(msize=max(4096, msize))
        root = client.attach()
        model = str(tmp_path / "model")
        os.mkdir(model)
        lanes = [Lane(root, model, k, seed * 100 + k) for k in range(LANES)]
        for lane in lanes:
            lane.start()
        for lane in lanes:
            lane.join(timeout=240)
            assert not lane.is_alive()
        failures = [f for lane in lanes for f in lane.failures]
        assert failures == []
        assert sum(lane.ops for lane in lanes) == LANES * OPS_PER_LANE
        assert _tree(d.export) == _tree(model)
        used_rings = {ring for ring, _, _ in d.guest.replies}
        assert used_rings == set(range(rings))
        root.clunk()
        assert d.ds.fids.count() == 0  # every fid made on any ring was clunked on some ring
    finally:
        d.close()
