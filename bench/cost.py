"""`python -m bench.cost`: where each operation's server microseconds go, ring path and socket path.

For every target (one ring worker; xen9p's socket transport; diod), op and load, three passes over
the same load from bench's load generator:

1. plain — server CPU per op from psutil, split into user (the interpreter) and system (the kernel:
   syscalls, wakeups, page faults), and ops/s;
2. strace — `strace -c -f` attached to every server thread: syscalls per op, by name;
3. py-spy — sampling the thread that holds the GIL (non-blocking): each sample is charged to the
   layer of its innermost frame, and the shares are turned into µs per op with pass 1's *user*
   CPU (the interpreter's); the system CPU is the kernel's, itemised by pass 2.

Passes 2 and 3 slow the server; only their counts and shares are used, never their timings.
Writes bench/results/cost-<timestamp>.{json,md} and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .families.peers import MSIZE as SOCKET_MSIZE  # diod's cap; both socket targets run at it
from .families.ring import MSIZE as RING_MSIZE
from .fixtures import build_export, op_params
from .loadgen import LoadPool
from .measure import cpu_split
from .probes import PySpy, Strace, pyspy_missing, strace_missing
from .profile import FULL
from . import targets
from .targets import SocketServer, TargetError, open_ring, worker_build

OPS = {"getattr": ("getattr", 0), "walkclunk": ("walkclunk", 0), "create": ("createwriteunlink", 0),
       "readdir": ("readdir", 0), "read4k": ("read", 4096), "write4k": ("write", 4096),
       "read512k": ("read", 512 * 1024)}  # read512k: the ring target only (socket msize is 64 KiB)
PER = {"getattr": "op", "walkclunk": "pair", "create": "file", "readdir": "entry",
       "read4k": "op", "write4k": "op", "read512k": "op"}

# Layers by the innermost frame's file (the first pattern that matches wins).
LAYERS = (
    ("codec", ("xen9p_common/p9/",)),
    ("journal", ("xen9p_worker/shared/journal.py", "xen9p_worker/ring_resume.py")),
    ("fid table, qids, locks (shared memory)", ("xen9p_worker/shared/", "xen9p_worker/fids.py",
                                                 "xen9p_worker/locks.py", "xen9p_worker/hostlocks.py")),
    ("fd cache", ("xen9p_worker/fdcache.py", "xen9p_worker/fidfds.py")),
    ("backend + its syscalls", ("xen9p_worker/backend/", "xen9p_worker/quota.py", "xen9p_worker/ustat.py")),
    ("handlers", ("xen9p_worker/handlers",)),
    ("dispatch", ("xen9p_worker/dispatch.py",)),
    ("thread pool + wakeups", ("xen9p_worker/pool.py", "/threading.py", "/queue.py", "/selectors.py")),
    ("ring: take, publish, notify", ("xen9p_common/ring.py", "xen9p_worker/ring_worker.py",
                                     "xen9p_worker/ring_main.py", "xen9p_common/platform/")),
    ("socket transport", ("xen9p_worker/transport_socket.py", "/socket.py")),
    ("metrics, watchdog, zmq", ("xen9p_worker/metrics.py", "xen9p_worker/watchdog.py", "/zmq/")),
)


def layer_of(path: str) -> str:
    for name, pats in LAYERS:
        if any(p in path for p in pats):
            return name
    return "other"


def charge(stacks: Counter) -> tuple[Counter, Counter]:
    """Samples per layer, per innermost line and per innermost function (each sample to its innermost frame)."""
    layers, lines, funcs = Counter(), Counter(), Counter()
    for stack, n in stacks.items():
        fn, path, line = stack[-1]
        layers[layer_of(path)] += n
        short = path.split("site-packages/")[-1].split("/main/")[-1]
        lines[f"{short}:{line} {fn}"] += n
        funcs[f"{short} {fn}"] += n
    return layers, lines, funcs


@dataclass
class Figure:
    target: str
    op: str
    load: str          # "<channels>x<depth>"
    ops_s: float = 0.0
    cpu_us: float = 0.0
    user_us: float = 0.0
    sys_us: float = 0.0
    syscalls_per_op: dict = field(default_factory=dict)
    layers_us: dict = field(default_factory=dict)
    top_lines: list = field(default_factory=list)   # (file:line function, % of samples)
    top_funcs: list = field(default_factory=list)   # (file function, user µs/op)
    note: str = ""
    build: str = ""    # the server's code: compiled, pure or mixed (xen9p_common.buildinfo); diod: C


class Target:
    """A running server and a load pool on it (n channels), version and attach done."""

    def __init__(self, kind: str, base: Path, export: Path, channels: int) -> None:
        self.kind = kind
        if kind == "ring":
            self.dev, self.pool = open_ring(base, export, channels, RING_MSIZE)
            self.name, self.msize = "ring", self.dev.msize
            self.extra: dict = {}
            self.build = "/".join(sorted(self.dev.builds))  # what the workers said in their "ready"
        else:
            self.dev = SocketServer(kind, base, export)
            self.name = self.dev.name
            self.pool = LoadPool(self.dev.channels(channels), tag_stride=1)
            self.pool.server_dead = self.dev.dead_reason
            try:
                self.msize = min(self.pool.call_all("version", SOCKET_MSIZE))
                self.pool.call_all("attach", (self.dev.aname, "root"))
            except BaseException:
                self.close()
                raise
            self.extra = {"remove": True}  # diod has no Tunlinkat: Twalk + Tremove on both
            self.build = "C" if kind == "diod" else worker_build()
        self.pids = self.dev.pids

    def close(self) -> None:
        self.pool.close()
        self.dev.close()


def _go(t: Target, op: str, depth: int, params: dict, duration: float, probe=None):
    """One pass: prepare, [attach probe], run, [stop probe]; (iterations, wall, probe result)."""
    t.pool.call_all("prepare", (op, depth, params))
    try:
        p = probe() if probe else None
        try:
            res = t.pool.call_all("go", (duration, 10_000_000))
        finally:
            got = p.stop() if p else None
    finally:
        t.pool.call_all("finish")
    errors = [r["error"] for r in res if r.get("error")]
    if errors:
        raise RuntimeError(errors[0])
    units = sum(r["units"] for r in res)
    return units, max(r["wall"] for r in res), got


def measure(t: Target, fx: dict, name: str, depth: int, duration: float, work: Path, label: str) -> Figure:
    op, size = OPS[name]
    params = {**op_params(fx, op, size, t.msize), **t.extra}
    fig = Figure(t.name, name, label, build=t.build)
    per = size if op in ("read", "write") else 1  # bytes ops count bytes: per op = per request
    u0, s0 = cpu_split(t.pids)
    units, wall, _ = _go(t, op, depth, params, duration)
    u1, s1 = cpu_split(t.pids)
    n = units / per
    if not n:
        fig.note = "no operation completed"
        return fig
    fig.ops_s = n / wall
    fig.user_us, fig.sys_us = (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6
    fig.cpu_us = fig.user_us + fig.sys_us
    if not strace_missing():
        units, _, (calls, _errs) = _go(t, op, depth, params, duration,
                                       lambda: Strace(t.pids, work / f"strace-{label}-{name}.txt"))
        n = units / per or 1
        fig.syscalls_per_op = {k: round(v / n, 2) for k, v in calls.most_common() if v / n >= 0.01}
    else:
        fig.note += strace_missing() + "; "
    if t.kind != "diod":
        why = pyspy_missing()
        if why:
            fig.note += why
        else:
            _, _, stacks = _go(t, op, depth, params, duration, lambda: PySpy(t.pids, work))
            layers, lines, funcs = charge(stacks)
            total = sum(layers.values())
            if total:
                fig.layers_us = {k: round(v / total * fig.user_us, 2) for k, v in layers.most_common()}
                fig.top_lines = [(k, round(v / total * 100, 1)) for k, v in lines.most_common(25)]
                fig.top_funcs = [(k, round(v / total * fig.user_us, 2)) for k, v in funcs.most_common(25)]
    return fig


def render(figs: list[Figure]) -> str:
    out = ["| target | build | op | load | ops/s | server CPU µs/op (user + sys) | syscalls/op |",
           "|---|---|---|---|---:|---:|---:|"]
    for f in figs:
        out.append(f"| {f.target} | {f.build} | {f.op} per {PER[f.op]} | {f.load} | {f.ops_s:,.0f} | {f.cpu_us:.1f} "
                   f"({f.user_us:.1f} + {f.sys_us:.1f}) | {sum(f.syscalls_per_op.values()):.1f} |")
    for f in figs:
        out.append(f"\n### {f.target} {f.op} {f.load}: {f.cpu_us:.1f} µs per {PER[f.op]}"
                   + (f" — {f.note}" if f.note else ""))
        if f.syscalls_per_op:
            out.append("syscalls/op: " + ", ".join(f"{k} {v:g}" for k, v in f.syscalls_per_op.items()))
        if f.layers_us:
            out.append("user µs/op by layer: " + ", ".join(f"{k} {v:g}" for k, v in f.layers_us.items()))
            out.append("hottest functions (user µs/op): " + "; ".join(f"{k} {v:g}" for k, v in f.top_funcs[:10]))
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default=",".join(o for o in OPS if o != "read512k"),
                    help=f"comma list of {', '.join(OPS)}")
    ap.add_argument("--targets", default="ring,xen9p,diod", help="comma list of ring, xen9p, diod")
    ap.add_argument("--loads", default="1x1,2x8",
                    help="channels x depth, comma list (the ring target uses one ring: NxD -> 1x(N*D))")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per pass")
    ap.add_argument("--entries", type=int, default=FULL.readdir_entries, help="entries in the Treaddir directory")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    targets.add_code_argument(ap)
    args = ap.parse_args(argv)
    targets.WORKER_CODE = args.code
    ops = [o for o in args.ops.split(",") if o]
    bad = [o for o in ops if o not in OPS]
    if bad:
        ap.error(f"unknown op(s) {bad}; known: {', '.join(OPS)}")
    loads = []
    for spec in args.loads.split(","):
        try:
            c, d = (int(x) for x in spec.split("x"))
        except ValueError:
            ap.error(f"--loads: {spec!r} is not CHANNELSxDEPTH")
        loads.append((c, d))
    profile = replace(FULL, readdir_entries=args.entries, read_file_mb=16)
    base = Path(tempfile.mkdtemp(prefix="xen9p-cost-"))
    figs: list[Figure] = []
    skipped: list[str] = []
    try:
        export = base / "export"
        export.mkdir()
        fx = build_export(export, profile)
        for kind in [k for k in args.targets.split(",") if k]:
            for c, d in loads:
                chans, depth = (1, c * d) if kind == "ring" else (c, d)
                label = f"{chans}x{depth}"
                try:
                    t = Target(kind, base, export, chans)
                except (TargetError, RuntimeError, OSError) as e:
                    skipped.append(f"{kind} {label}: {e}")
                    print(f"skip {kind} {label}: {e}", file=sys.stderr)
                    continue
                try:
                    for name in ops:
                        f = measure(t, fx, name, depth, args.duration, base, label)
                        figs.append(f)
                        print(f"{f.target:12s} {f.build:8s} {name:9s} {label:5s} {f.cpu_us:7.1f} µs/op "
                              f"({f.user_us:.1f}+{f.sys_us:.1f}) {sum(f.syscalls_per_op.values()):5.1f} syscalls "
                              f"{f.ops_s:9.0f}/s", file=sys.stderr, flush=True)
                finally:
                    t.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if not figs:
        print("nothing measured: " + "; ".join(skipped), file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    md = render(figs) + "".join(f"\nskipped: {s}" for s in skipped)
    args_text = " ".join(argv if argv is not None else sys.argv[1:])
    head = f"# cost profile {stamp}\n\n`python -m bench.cost {args_text}`\n\n"
    (args.out / f"cost-{stamp}.md").write_text(head + md)
    (args.out / f"cost-{stamp}.json").write_text(json.dumps({"figures": [asdict(f) for f in figs],
                                                             "skipped": skipped}, indent=1))
    print(md)
    print(args.out / f"cost-{stamp}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
