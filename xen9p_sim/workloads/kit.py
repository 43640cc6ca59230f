"""What every simulated-guest workload shares: progress counters, the summary, the checker, file helpers.

The helpers count each 9P operation they make in Progress, so workloads report ops and bytes uniformly.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Callable

from xen9p_sim.client import Fid
from xen9p_common.p9 import constants as c


@dataclass
class Progress:
    """Counters a workload bumps as it goes; read by a progress display in another thread."""

    ops: int = 0
    bytes: int = 0
    errors: int = 0

    def op(self, nbytes: int = 0) -> None:
        self.ops += 1
        self.bytes += nbytes


@dataclass
class Summary:
    workload: str
    ops: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / (1 << 20) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mb_per_s"] = round(self.mb_per_s, 2)
        d["seconds"] = round(self.seconds, 3)
        return d

    def line(self) -> str:
        return (f"{self.workload}: {self.ops} ops, {self.bytes / (1 << 20):.1f} MiB in {self.seconds:.2f} s "
                f"({self.mb_per_s:.1f} MB/s), {self.errors} errors")


class Check:
    """Collects verification failures without stopping the workload."""

    def __init__(self, progress: Progress, details: list[str]) -> None:
        self.progress = progress
        self.details = details

    def __call__(self, ok: bool, what: str) -> None:
        if not ok:
            self.progress.errors += 1
            if len(self.details) < 20:
                self.details.append(what)


WorkloadFn = Callable[[Fid, random.Random, int, Progress, Check], None]


def pattern(rnd: random.Random, n: int) -> bytes:
    return rnd.randbytes(n)


def write_file(d: Fid, name: str, data: bytes, p: Progress, mode: int = 0o644) -> None:
    with d.create(name, c.L_O_RDWR | c.L_O_CREAT | c.L_O_TRUNC, mode) as f:
        f.write(data, 0)
    p.op(len(data))


def read_file(d: Fid, name: str, p: Progress) -> bytes:
    with d.open_path([name], c.L_O_RDONLY) as f:
        data = f.read(0)
    p.op(len(data))
    return data


def remove_tree(d: Fid, p: Progress) -> None:
    """rm -r of everything below d (d itself stays)."""
    with d.walk() as dd:
        dd.open(c.L_O_RDONLY | c.L_O_DIRECTORY)
        entries = [e for e in dd.readdir() if e.name not in (".", "..")]
    for e in entries:
        if e.qid.type & 0x80:
            with d.walk([e.name]) as sub:
                remove_tree(sub, p)
            d.rmdir(e.name)
        else:
            d.unlink(e.name)
        p.op()
