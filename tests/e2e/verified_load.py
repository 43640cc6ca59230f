"""A guest workload whose every effect is checked on the host afterwards: nothing lost, doubled or torn.

Each thread owns one directory in the export and keeps a model of what it did there:
  - writes: checksummed records at fixed offsets of `data` (read back at random, and on the host);
  - appends: numbered, checksummed lines on `log`, opened O_APPEND (a doubled Twrite adds a line);
  - creates with O_EXCL (applied twice: EEXIST), renames (twice: ENOENT), unlinks (twice: ENOENT);
  - readdir compared with the model.
Any 9P error is guest-visible and recorded. `verify()` compares every directory on the host with
its model. The Load base class counts requests and replies (every request answered exactly once).
"""
from __future__ import annotations

import os
import random
import struct
import threading
import zlib

from tests.e2e.real_guest import Load
from xen9p_common.p9 import constants as c

REC = 512  # one write record: seq, crc, payload
_HDR = struct.Struct("<II")
LINE = 32  # one append line


def record(seq: int, rnd: random.Random) -> bytes:
    payload = rnd.randbytes(REC - _HDR.size)
    return _HDR.pack(seq, zlib.crc32(payload)) + payload


def line(seq: int) -> bytes:
    body = f"{seq:010d} {zlib.crc32(str(seq).encode()):08x}"
    return body.encode().ljust(LINE - 1, b".") + b"\n"


class Model:
    def __init__(self, name: str) -> None:
        self.name = name
        self.records: dict[int, bytes] = {}
        self.appended = 0
        self.files: dict[str, bytes] = {}  # created (maybe renamed) files and their content


class VerifiedLoad(Load):
    def __init__(self, client, root, export: str, threads: int = 2, seed: int = 0) -> None:
        super().__init__(client, root, threads=0)
        self.export = export
        self.models = [Model(f"v{seed}-{i}") for i in range(threads)]
        self.counts: dict[str, int] = {}
        self._count_mu = threading.Lock()
        self.threads = [threading.Thread(target=self._guard, args=(self._work, i), daemon=True)
                        for i in range(threads)]
        self.seed = seed

    def _did(self, what: str) -> None:
        with self._count_mu:
            self.counts[what] = self.counts.get(what, 0) + 1
        self._count()

    def _work(self, i: int) -> None:
        rnd = random.Random(self.seed * 1000 + i)
        mdl = self.models[i]
        self.root.mkdir(mdl.name, 0o755)
        with self.root.walk([mdl.name]) as d, d.create("data", c.L_O_RDWR | c.L_O_CREAT, 0o644) as data, \
                d.create("log", c.L_O_WRONLY | c.L_O_CREAT | c.L_O_APPEND, 0o644) as log:
            seq = 0
            while not self._stop.is_set():
                seq += 1
                op = rnd.choice(("write", "write", "append", "append", "create", "rename", "unlink",
                                 "read", "readdir"))
                if op == "write":
                    k = rnd.randrange(64)
                    rec = record(seq, rnd)
                    assert data.write(rec, k * REC) == REC
                    mdl.records[k] = rec
                elif op == "append":
                    assert log.write(line(mdl.appended), 0) == LINE
                    mdl.appended += 1
                elif op == "create":
                    name = f"c{seq}"
                    body = rnd.randbytes(rnd.randrange(1, 3000))
                    with d.create(name, c.L_O_WRONLY | c.L_O_CREAT | c.L_O_EXCL, 0o644) as f:
                        assert f.write(body, 0) == len(body)
                    mdl.files[name] = body
                elif op == "rename" and mdl.files:
                    old = rnd.choice(sorted(mdl.files))
                    new = f"r{seq}"
                    d.renameat(old, d, new)
                    mdl.files[new] = mdl.files.pop(old)
                elif op == "unlink" and mdl.files:
                    name = rnd.choice(sorted(mdl.files))
                    d.unlink(name)
                    del mdl.files[name]
                elif op == "read" and mdl.records:
                    k = rnd.choice(sorted(mdl.records))
                    got = data.read(k * REC, REC)
                    assert got == mdl.records[k], f"{mdl.name}/data record {k} reads back wrong"
                elif op == "readdir":
                    names = set(d.listdir()) - {".", ".."}
                    want = set(mdl.files) | {"data", "log"}
                    assert names == want, f"{mdl.name}: readdir {sorted(names ^ want)} differ from the model"
                else:
                    continue
                self._did(op)

    def verify(self) -> list[str]:
        """Compare every thread's directory on the host with its model; the differences."""
        bad = []
        for mdl in self.models:
            base = os.path.join(self.export, mdl.name)
            names = set(os.listdir(base))
            want = set(mdl.files) | {"data", "log"}
            if names != want:
                bad.append(f"{mdl.name}: entries {sorted(names ^ want)} differ (lost or doubled ops)")
            for n, body in mdl.files.items():
                if n in names:
                    with open(os.path.join(base, n), "rb") as f:
                        if f.read() != body:
                            bad.append(f"{mdl.name}/{n}: content differs")
            with open(os.path.join(base, "data"), "rb") as f:
                blob = f.read()
            for k, rec in mdl.records.items():
                if blob[k * REC:(k + 1) * REC] != rec:
                    bad.append(f"{mdl.name}/data record {k}: lost or torn")
            with open(os.path.join(base, "log"), "rb") as f:
                log = f.read()
            want_log = b"".join(line(s) for s in range(mdl.appended))
            if log != want_log:
                bad.append(f"{mdl.name}/log: {len(log) // LINE} lines, {mdl.appended} appended "
                           f"(first difference at byte {next((i for i, (a, b) in enumerate(zip(log, want_log)) if a != b), min(len(log), len(want_log)))})")
        return bad


def report(result: dict, check, passed: str) -> int:
    """A long run's command-line ending: every figure, then PASS (exit 0) or FAIL with why (exit 1)."""
    for k, v in result.items():
        print(f"{k}: {v}")
    try:
        check(result)
    except AssertionError as e:
        print(f"FAIL: {e}")
        return 1
    print(f"PASS: {passed}")
    return 0
