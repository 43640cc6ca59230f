"""Run fuzz targets: `python -m tests.fuzz [TARGET ...|all] [--runs N] [--seed S]`.

Each target runs in its own process under atheris (libFuzzer), coverage-guided over xen9p's own
modules; without atheris installed, `--random` feeds seeded random bytes instead (say so when quoting
figures). A finding stops that target, keeps its input in --artifacts and exits non-zero; copy the
input into tests/fuzz/regressions/<target>/ to keep it as a regression test.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time

from .targets import NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_target(name: str, runs: int, seed: int, max_len: int, artifacts: str, use_atheris: bool,
               extra: list[str]) -> dict:
    os.makedirs(os.path.join(artifacts, name), exist_ok=True)
    if use_atheris:
        cmd = [sys.executable, "-m", "tests.fuzz.run_one", name, f"-runs={runs}", f"-seed={seed}",
               f"-max_len={max_len}", f"-artifact_prefix={os.path.join(artifacts, name)}/",
               "-print_final_stats=1", *extra]
    else:
        cmd = [sys.executable, "-m", "tests.fuzz.run_one", "--random", name, str(runs), str(seed), str(max_len)]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, errors="replace")
    secs = time.monotonic() - t0
    out = p.stdout + p.stderr
    # The whole output, kept: a finding's traceback comes long before libFuzzer's closing lines.
    with open(os.path.join(artifacts, name, "last-run.log"), "w") as f:
        f.write(out)
    done = re.findall(r"Done (\d+) runs", out)
    cov = re.findall(r"cov: (\d+)", out)
    return {"target": name, "inputs": int(done[-1]) if done else None, "seconds": round(secs, 1),
            "coverage": int(cov[-1]) if cov else None, "finding": p.returncode != 0,
            "mode": "atheris" if use_atheris else "random", "rc": p.returncode, "output": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", default=["all"], help=f"{', '.join(NAMES)} or all")
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs per target (default 10^6)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--artifacts", default=os.path.join(ROOT, "fuzz-artifacts"))
    ap.add_argument("--random", action="store_true", help="seeded random inputs, without atheris")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the fuzzer's output")
    args, extra = ap.parse_known_args(argv)
    names = list(NAMES) if args.targets == ["all"] else args.targets
    for n in names:
        if n not in NAMES:
            ap.error(f"unknown target {n!r}")
    use_atheris = not args.random
    if use_atheris and importlib.util.find_spec("atheris") is None:
        ap.error("atheris is not installed (pip install '.[test]'), or pass --random")
    failed = 0
    for n in names:
        r = run_target(n, args.runs, args.seed, args.max_len, args.artifacts, use_atheris, extra)
        if args.verbose or r["finding"]:
            print(r["output"][-6000:], file=sys.stderr)
            print(f"(the whole output: {os.path.join(args.artifacts, n, 'last-run.log')})", file=sys.stderr)
        print(f"fuzz {n}: {r['inputs']} inputs ({r['mode']}, seed {args.seed}), {r['seconds']} s, "
              f"coverage {r['coverage']}, {'FINDING (rc %d)' % r['rc'] if r['finding'] else '0 findings'}",
              flush=True)
        failed += r["finding"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
