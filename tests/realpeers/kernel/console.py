"""Parses the guest's serial console into check results, phase markers and timings.
Pure: takes (host seconds since launch, line) pairs, so tests feed it canned consoles."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

RESULT_RE = re.compile(r"@@RESULT (PASS|FAIL|SKIP) (\S+) ?(.*)$")
DONE_RE = re.compile(r"@@DONE pass=(\d+) fail=(\d+)(?: skip=(\d+))?")
PHASE_RE = re.compile(r"@@PHASE ([0-9.]+) (\S+) ?(.*)$")
_RANK = {"PASS": 0, "SKIP": 1, "FAIL": 2}


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str       # PASS, FAIL or SKIP
    detail: str
    host_t: float     # seconds since QEMU was launched


@dataclass(frozen=True)
class Phase:
    name: str
    host_t: float
    guest_t: float
    detail: str


@dataclass
class ConsoleReport:
    results: dict[str, CheckResult] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)
    done: tuple[int, int, int] | None = None    # pass, fail, skip as the guest counted them

    def counts(self) -> dict[str, int]:
        out = {"PASS": 0, "FAIL": 0, "SKIP": 0}
        for r in self.results.values():
            out[r.status] += 1
        return out

    def phase_durations(self) -> list[tuple[str, float]]:
        """Host wall-clock seconds from each phase marker to the next."""
        return [(a.name, round(b.host_t - a.host_t, 2)) for a, b in zip(self.phases, self.phases[1:])]


def parse_console(lines: Iterable[tuple[float, str]]) -> ConsoleReport:
    report = ConsoleReport()
    for host_t, raw in lines:
        line = raw.rstrip("\r\n")
        m = RESULT_RE.search(line)
        if m:
            status, name, detail = m.groups()
            old = report.results.get(name)
            # A name reported twice keeps its worst outcome: a later PASS cannot hide a FAIL.
            if old is None or _RANK[status] > _RANK[old.status]:
                report.results[name] = CheckResult(name, status, detail.strip(), host_t)
            continue
        m = DONE_RE.search(line)
        if m:
            report.done = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
            continue
        m = PHASE_RE.search(line)
        if m:
            report.phases.append(Phase(m.group(2), host_t, float(m.group(1)), m.group(3).strip()))
    return report
