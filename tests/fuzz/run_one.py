"""One fuzz target in this process: `python -m tests.fuzz.run_one TARGET [libFuzzer flags]` (atheris),
or `python -m tests.fuzz.run_one --replay TARGET FILE...` (no atheris needed).

The runner in __main__ starts this once per target; libFuzzer ends the process itself.
"""
from __future__ import annotations

import importlib
import os
import random
import sys
import time

from .targets import NAMES
from .tmpfs import SANDBOX_PARENT_ENV, private_tmpfs

INSTRUMENTED = ["xen9p_common", "xen9p_worker", "xen9p_supervisor"]


def load(name: str, instrument: bool):
    if name not in NAMES:
        raise SystemExit(f"unknown fuzz target {name!r}; one of {', '.join(NAMES)}")
    if name == "dispatch" and os.environ.get("XEN9P_FUZZ_TMPFS", "1") != "0":
        # This process only (never pytest's): a mount namespace of its own, before any thread starts.
        parent, why = private_tmpfs()
        print(f"fuzz dispatch: {why}", file=sys.stderr, flush=True)
        if parent is not None:
            os.environ[SANDBOX_PARENT_ENV] = parent  # read by the target (importing it here would skip instrumenting)
    if not instrument:
        return importlib.import_module(f"tests.fuzz.targets.{name}")
    import atheris
    with atheris.instrument_imports(include=INSTRUMENTED):
        return importlib.import_module(f"tests.fuzz.targets.{name}")


def replay(name: str, paths: list[str]) -> None:
    target = load(name, instrument=False)
    for p in paths:
        with open(p, "rb") as f:
            target.one_input(f.read())
    print(f"replayed {len(paths)} input(s) of {name}: no finding", flush=True)


def random_inputs(name: str, runs: int, seed: int, max_len: int) -> None:
    """Without atheris: seeded random inputs (not coverage-guided); a finding raises."""
    target = load(name, instrument=False)
    rnd = random.Random(seed)
    t0 = time.monotonic()
    for _ in range(runs):
        target.one_input(rnd.randbytes(rnd.randrange(max_len + 1)))
    print(f"Done {runs} runs in {time.monotonic() - t0:.0f} second(s) (random, seed {seed})", flush=True)


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--replay":
        replay(argv[1], argv[2:])
        return
    if argv and argv[0] == "--random":
        _, name, runs, seed, max_len = argv
        random_inputs(name, int(runs), int(seed), int(max_len))
        return
    import atheris
    target = load(argv[0], instrument=True)
    atheris.Setup([sys.argv[0]] + argv[1:], target.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
