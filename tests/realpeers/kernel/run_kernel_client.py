"""One kernel-client run: build (cached) guest, start a server, boot, collect the console report.
Also a CLI: python3 -m tests.realpeers.kernel.run_kernel_client --server diod [--suite full]."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .catalog import SuitePlan, PLANS, selected_plan
from .console import ConsoleReport, parse_console
from .guest_image import GuestImage, build_guest
from .qemu_boot import BootResult, boot_guest
from .servers import SERVER_SPECS, start_server


@dataclass
class KernelRun:
    server: str
    plan: SuitePlan
    report: ConsoleReport
    boot: BootResult
    timings: dict[str, float] = field(default_factory=dict)
    server_log: Path | None = None
    server_rc: int | None = None

    def missing(self) -> list[str]:
        return [c for c in self.plan.expected_checks() if c not in self.report.results]

    def unexpected(self) -> list[str]:
        want = set(self.plan.expected_checks())
        return [c for c in self.report.results if c not in want]

    def ok(self) -> bool:
        return (self.report.done is not None and not self.boot.timed_out and not self.missing()
                and self.report.counts()["FAIL"] == 0)

    def summary(self) -> str:
        c = self.report.counts()
        head = (f"kernel-client[{self.server}/{self.plan.level}]: pass={c['PASS']} fail={c['FAIL']} "
                f"skip={c['SKIP']} missing={len(self.missing())} timed_out={self.boot.timed_out} "
                f"wall={self.boot.wall_s:.1f}s log={self.boot.log_path}")
        lines = [head, "  timings: " + " ".join(f"{k}={v}s" for k, v in self.timings.items())]
        lines += [f"  phase {name}: {dur}s" for name, dur in self.report.phase_durations()]
        lines += [f"  FAIL {r.name}: {r.detail}" for r in self.report.results.values() if r.status == "FAIL"]
        lines += [f"  SKIP {r.name}: {r.detail}" for r in self.report.results.values() if r.status == "SKIP"]
        lines += [f"  MISSING {name}" for name in self.missing()]
        return "\n".join(lines)


def _timings(report: ConsoleReport, boot: BootResult, server_start_s: float) -> dict[str, float]:
    out = {"server_start": round(server_start_s, 2), "qemu_total": round(boot.wall_s, 2)}
    mount = report.results.get("boot.mount")
    if mount:
        out["launch_to_mounted"] = round(mount.host_t, 2)
    marks = {p.name: p.host_t for p in report.phases}
    for script in ("posix", "suites"):
        if f"start_{script}" in marks and f"end_{script}" in marks:
            out[script] = round(marks[f"end_{script}"] - marks[f"start_{script}"], 2)
    return out


def run_against(server: str, plan: SuitePlan, workdir: Path, image: GuestImage | None = None,
                timeout_s: float | None = None) -> KernelRun | str:
    """The collected run, or a one-line reason why this server cannot be run here."""
    spec = SERVER_SPECS[server](workdir)
    if isinstance(spec, str):
        return spec
    image = image or build_guest()
    t0 = time.monotonic()
    running = start_server(spec)
    server_start_s = time.monotonic() - t0
    run_conf = plan.run_conf(plan.mount_opts(spec.mount_opts))
    if os.environ.get("XEN9P_KERNEL_RELAY_DEBUG") == "1":
        run_conf["RELAY_DEBUG"] = "1"
    try:
        boot = boot_guest(image, spec.socket_path, run_conf,
                          workdir / f"guest-{server}.log", timeout_s or plan.wall_timeout_s)
    finally:
        rc = running.stop()
    report = parse_console(boot.lines)
    return KernelRun(server=server, plan=plan, report=report, boot=boot,
                     timings=_timings(report, boot, server_start_s), server_log=spec.log_path, server_rc=rc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", choices=sorted(SERVER_SPECS), default="diod")
    ap.add_argument("--suite", choices=sorted(PLANS), default=None,
                    help="default: $XEN9P_KERNEL_SUITE or smoke")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary directory")
    ap.add_argument("--timeout", type=float, default=None, help="QEMU wall-clock limit in seconds")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    plan = PLANS[args.suite] if args.suite else selected_plan()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="xen9p-kernel-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run = run_against(args.server, plan, workdir, timeout_s=args.timeout)
    if isinstance(run, str):
        print(f"cannot run {args.server}: {run}", file=sys.stderr)
        return 69
    if args.json:
        print(json.dumps({"server": run.server, "suite": plan.level, "timings": run.timings,
                          "results": {n: [r.status, r.detail] for n, r in run.report.results.items()},
                          "missing": run.missing(), "log": str(run.boot.log_path)}, indent=2))
    else:
        print(run.summary())
    return 0 if run.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
