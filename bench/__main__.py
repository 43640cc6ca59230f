"""`python -m bench [--quick] [--out DIR] [--only FAMILY ...]`: run the suite and write the report.

Exit codes: 0 ran (skips are stated in the report), 1 nothing could be measured, 2 usage.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import targets
from .families import FAMILIES
from .fixtures import build_export
from .profile import FULL, QUICK
from .report import write_report
from .runner import Context, run_families

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the CI smoke profile (under 2 minutes on 2 cores)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (default bench/results)")
    p.add_argument("--only", action="append", choices=[f.NAME for f in FAMILIES],
                   help="run only this family (repeatable)")
    p.add_argument("--rings", type=lambda s: tuple(int(x) for x in s.split(",")),
                   help="ring counts, e.g. 1,2 (default: the profile's)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the exported tree is built (default: the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (worker logs) after the run")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    targets.add_code_argument(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    targets.WORKER_CODE = args.code
    profile = QUICK if args.quick else FULL
    if args.rings:
        from dataclasses import replace
        profile = replace(profile, rings=args.rings)
    base = Path(tempfile.mkdtemp(prefix="xen9p-bench-", dir=args.workdir))
    try:
        export = base / "export"
        export.mkdir()
        ctx = Context(profile=profile, base=base, export=export, fixtures={}, verbose=not args.quiet)
        ctx.log(f"profile {profile.name}; building the export in {export}")
        ctx.fixtures = build_export(export, profile)
        run_families(ctx, FAMILIES, set(args.only) if args.only else None)
        elapsed = time.monotonic() - ctx.started
        paths = write_report(ctx, args.out, argv=sys.argv if argv is None else ["python", "-m", "bench", *argv],
                             elapsed=elapsed)
    finally:
        if args.keep:
            print(f"work directory kept: {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    for p in paths.values():
        print(p)
    return 0 if ctx.rows else 1


if __name__ == "__main__":
    sys.exit(main())
