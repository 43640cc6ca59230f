"""Results of a run: JSON (every row), a Markdown table with each floor next to its figure, PNG plots.

Written to <out>/<timestamp>.json, .md, -throughput.png and -latency.png.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

from .measure import Row

KiB = 1024
EXPLAIN = """\
What the figures measure:
- **ring**: the load generator (one process per ring, standing in for guest vCPUs; each keeps `depth`
  requests in flight on its ring, tags chosen so `tag % num_rings` is its ring, a notify after every
  request as Linux does) -> simulated Xen ring (sim grants + event channels) -> one `python -m xen9p_worker
  ring` process per ring (one device, shared state) -> local directory. Throughput is the aggregate over all
  rings; "per ring" divides it by the ring count.
- **server CPU µs/op**: user+system CPU time of all server processes (psutil) over the timed window,
  divided by completed iterations (an iteration of a compound op, e.g. create+write+clunk+unlink, is one
  op; `µs/req` divides by 9P requests instead). "cores busy" = server CPU seconds per wall second.
- **client CPU**: the load generator's own CPU per op; when client + server cores busy reach the machine's
  core count, the figure is bounded by the machine, not by the server alone.
- **latency p50/p99**: per iteration, from the first request sent to the last reply received, in the
  load generator (includes its queueing at 16 in flight).
- **peers**: the same load generator over a Unix socket against the xen9p server core (`python -m
  xen9p_worker --listen`) and against diod (C), both at msize 65536; each connection is one process.
- **limits**: one Python thread doing the bare work: memcpy between two shared mappings, and the
  syscall(s) behind each op in a loop (Python's call overhead included).
- QEMU's serving policy (one request per ring at a time) is not measured here and is not a peer; the
  real QEMU comparison comes from the real-Xen lab.
"""


def _find(rows, **kw) -> Row | None:
    for r in rows:
        if all(getattr(r, k) == v for k, v in kw.items()):
            return r
    return None


def fmt_rate(r: Row) -> str:
    if r.unit == "bytes":
        return f"{r.mb_s:,.0f} MB/s"
    return f"{r.rate:,.0f} {r.unit}/s"


def fmt_size(n: int) -> str:
    if not n:
        return ""
    return f"{n // KiB} KiB" if n % KiB == 0 else f"{n} B"


def _scaling_note(one, two) -> str:
    """Whether the 2-ring figure had cores to scale into: server + load generator cores busy."""
    cores = os.cpu_count() or 1
    if not (one and two):
        return f"{cores} cores; load generator shares them"
    busy = two.server_cpu_util + two.client_cpu_util
    per_core = [r.rate / r.server_cpu_util if r.server_cpu_util else 0 for r in (one, two)]
    eff = per_core[1] / per_core[0] if per_core[0] else 0
    bound = "machine-bound: " if busy >= 0.9 * cores else ""
    return (f"{bound}server {two.server_cpu_util:.2f} + load generator {two.client_cpu_util:.2f} of {cores} "
            f"cores busy; per server core {eff:.0%} of 1 ring's")


def floors(rows: list[Row], skipped: list[dict]) -> list[dict]:
    """Each floor of issues 4 and 7 with the figure it is read against (None = not measured)."""
    ring_why = next((s["reason"] for s in skipped if s["family"] == "ring" and s["what"] == "*"), "not measured")
    peer_why = next((s["reason"] for s in skipped if s["family"] == "peers" and s["what"] in ("*", "diod")),
                    "not measured")
    out = []

    def figure_why(op: str, rings: int, size: int = 0) -> str:
        """Why a ring figure is missing: its own skip line if there is one."""
        key = f"{op} {size} n={rings} d=16"
        for s in skipped:
            if s["family"] == "ring" and key in s["what"]:
                return s["reason"][:300]
        return ring_why if ring_why != "not measured" else "figure missing (see Skipped)"

    def add(name, value, target, ok, unit, why="", what=""):
        out.append({"floor": name, "value": value, "target": target, "ok": ok, "unit": unit,
                    "why": why if value is None else "", "what": what})

    g1 = _find(rows, family="ring", op="Tgetattr", rings=1, depth=16)
    add("Tgetattr/s per ring, 16 in flight", g1.rate if g1 else None, ">= 30,000",
        g1 is not None and g1.rate >= 30000, "ops/s", figure_why("Tgetattr", 1), "1 ring, 1 worker")
    add("server CPU per Tgetattr", g1.server_cpu_us if g1 else None, "<= 30 µs",
        g1 is not None and g1.server_cpu_us <= 30, "µs", figure_why("Tgetattr", 1), "1 ring, 16 in flight")
    r512 = _find(rows, family="ring", op="Tread", size=512 * KiB, rings=1, depth=16)
    add("512 KiB Tread per ring", r512.mb_s / 1000 if r512 else None, ">= 3 GB/s",
        r512 is not None and r512.mb_s >= 3000, "GB/s", figure_why("Tread", 1, 512 * KiB),
        "1 ring, 16 in flight, page cache")
    # Read against memcpy of the same working set as the Tread (a file beyond the LLC into a ring
    # half); the cache-resident memcpy of one 512 KiB buffer is in the limits table beside it.
    mc = _find(rows, family="limits", op="memcpy-stream", size=512 * KiB) or \
        _find(rows, family="limits", op="memcpy", size=512 * KiB)
    if r512 and mc:
        add("512 KiB Tread / memcpy of 512 KiB", r512.mb_s / mc.mb_s * 100, ">= 30 %", r512.mb_s >= 0.3 * mc.mb_s,
            "%", what=f"{mc.op} {mc.mb_s:,.0f} MB/s in the same run ({mc.note})")
    else:
        add("512 KiB Tread / memcpy of 512 KiB", None, ">= 30 %", False, "%", figure_why("Tread", 1, 512 * KiB))
    g2 = _find(rows, family="ring", op="Tgetattr", rings=2, depth=16)
    add("2 rings vs 1 ring (Tgetattr, 16 in flight)", g2.rate / g1.rate if g1 and g2 and g1.rate else None,
        ">= 1.6x", bool(g1 and g2 and g2.rate >= 1.6 * g1.rate), "x",
        figure_why("Tgetattr", 2) if g1 else figure_why("Tgetattr", 1), _scaling_note(g1, g2))
    t1 = _find(rows, family="ring", op="Tread", size=512 * KiB, rings=1, depth=16)
    t2 = _find(rows, family="ring", op="Tread", size=512 * KiB, rings=2, depth=16)
    if t1 and t2 and t1.rate:
        add("2 rings vs 1 ring (512 KiB Tread, 16 in flight)", t2.rate / t1.rate, ">= 1.6x",
            t2.rate >= 1.6 * t1.rate, "x", what=_scaling_note(t1, t2))
    rss = [r.rss_mb for r in rows if r.family == "ring" and r.rss_mb]
    add("worker RSS", max(rss) if rss else None, "<= 60 MB", bool(rss) and max(rss) <= 60, "MB", ring_why,
        "largest worker over the ring runs")
    # Peers: the loaded point (most connections) of each small op.
    peer_rows = [r for r in rows if r.family == "peers"]
    top = max((r.rings for r in peer_rows), default=0)
    for op in ("Tgetattr", "Twalk+Tclunk", "create+write4K+unlink", "Treaddir"):
        x = _find(peer_rows, target="xen9p socket", op=op, rings=top)
        d = _find(peer_rows, target="diod (C)", op=op, rings=top)
        ok = bool(x and d and d.server_cpu_us and x.server_cpu_us <= 3 * d.server_cpu_us)
        add(f"server CPU/op vs diod: {op}", x.server_cpu_us / d.server_cpu_us if x and d and d.server_cpu_us
            else None, "<= 3x", ok, "x", peer_why, "socket transport, msize 64 KiB")
    x = [r for r in peer_rows if r.target == "xen9p socket" and r.op == "Tread" and r.size > 4 * KiB and r.rings == top]
    d = [r for r in peer_rows if r.target == "diod (C)" and r.op == "Tread" and r.size > 4 * KiB and r.rings == top]
    add("large Tread throughput vs diod", x[0].mb_s / d[0].mb_s if x and d and d[0].mb_s else None, ">= 1x",
        bool(x and d and x[0].mb_s >= d[0].mb_s), "x", peer_why,
        f"Tread {x[0].size if x else 0} B, msize 64 KiB" if x else "")
    return out


def _num(v, unit) -> str:
    if v is None:
        return "—"
    if unit in ("x",):
        return f"{v:.2f}x"
    if unit == "%":
        return f"{v:.0f} %"
    if unit == "GB/s":
        return f"{v:.2f} GB/s"
    if v >= 100:
        return f"{v:,.0f} {unit}"
    return f"{v:.1f} {unit}"


def markdown(rows: list[Row], skipped: list[dict], fl: list[dict], meta: dict) -> str:
    L = [f"# xen9p bench — {meta['when']} ({meta['profile']} profile)", "",
         f"`{meta['command']}` on {meta['host']}: {meta['cpus']} CPUs ({meta['cpu_model']}), Python "
         f"{meta['python']}, git {meta['git']}, {meta['elapsed']:.0f} s; xen9p servers: {meta['build']}.", "",
         "## Floors", "", "| floor | target | measured | met | notes |", "|---|---|---|---|---|"]
    for f in fl:
        met = "—" if f["value"] is None else ("yes" if f["ok"] else "**no**")
        note = f["why"] if f["value"] is None else f["what"]
        L.append(f"| {f['floor']} | {f['target']} | {_num(f['value'], f['unit'])} | {met} | {note} |")
    ring = [r for r in rows if r.family == "ring"]
    if ring:
        L += ["", "## Ring path (sim frontend -> ring -> worker processes -> local directory)", "",
              "| op | size | rings | in flight/ring | throughput | per ring | p50 µs | p99 µs | server CPU µs/op "
              "| µs/req | server cores busy | client CPU µs/op | worker RSS MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in ring:
            per = (f"{r.mb_s / r.rings:,.0f} MB/s" if r.unit == "bytes" else f"{r.rate / r.rings:,.0f}")
            L.append(f"| {r.op} | {fmt_size(r.size)} | {r.rings} | {r.depth} | {fmt_rate(r)} | {per} | "
                     f"{r.p50_us:,.0f} | {r.p99_us:,.0f} | {r.server_cpu_us:.1f} | {r.server_cpu_us_req:.1f} | "
                     f"{r.server_cpu_util:.2f} | {r.client_cpu_us:.1f} | {r.rss_mb:.1f} |")
        L += ["", "### Scaling: aggregate throughput vs rings (16 in flight per ring)", ""]
        counts = sorted({r.rings for r in ring})
        L += ["| op | size | " + " | ".join(f"{n} ring{'s' if n > 1 else ''}" for n in counts) + " |",
              "|---|---|" + "---|" * len(counts)]
        for op, size in dict.fromkeys((r.op, r.size) for r in ring if r.depth == 16):
            base = _find(ring, op=op, size=size, rings=counts[0], depth=16)
            cells = []
            for n in counts:
                r = _find(ring, op=op, size=size, rings=n, depth=16)
                if r is None:
                    cells.append("—")
                    continue
                x = f" ({r.rate / base.rate:.2f}x)" if base and base.rate and n != counts[0] else ""
                cells.append(fmt_rate(r) + x)
            L.append(f"| {op} | {fmt_size(size)} | " + " | ".join(cells) + " |")
    peers = [r for r in rows if r.family == "peers"]
    if peers:
        L += ["", "## xen9p server core vs diod (C), Unix socket, msize 65536, same load generator", "",
              "| op | size | conns x in flight | xen9p | diod | xen9p/diod | xen9p CPU µs/op | diod CPU µs/op | "
              "CPU ratio | xen9p p50/p99 µs | diod p50/p99 µs | xen9p RSS MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key in dict.fromkeys((r.op, r.size, r.rings, r.depth) for r in peers):
            op, size, n, depth = key
            x = _find(peers, target="xen9p socket", op=op, size=size, rings=n, depth=depth)
            d = _find(peers, target="diod (C)", op=op, size=size, rings=n, depth=depth)
            ratio = f"{x.rate / d.rate:.2f}" if x and d and d.rate else "—"
            cr = f"{x.server_cpu_us / d.server_cpu_us:.2f}" if x and d and d.server_cpu_us else "—"
            L.append(f"| {op} | {fmt_size(size)} | {n} x {depth} | {fmt_rate(x) if x else '—'} | "
                     f"{fmt_rate(d) if d else '—'} | {ratio} | {x.server_cpu_us:.1f} | "
                     f"{d.server_cpu_us:.1f} | {cr} | {x.p50_us:,.0f}/{x.p99_us:,.0f} | "
                     f"{(f'{d.p50_us:,.0f}/{d.p99_us:,.0f}') if d else '—'} | {x.rss_mb:.1f} |"
                     if x else f"| {op} | {fmt_size(size)} | {n} x {depth} | — | {fmt_rate(d) if d else '—'} "
                     "| — | — | — | — | — | — | — |")
    lim = [r for r in rows if r.family == "limits"]
    if lim:
        L += ["", "## Limits (one Python thread, same run)", "", "| what | size | rate | µs per call | how |",
              "|---|---|---|---|---|"]
        for r in lim:
            L.append(f"| {r.target}: {r.op} | {fmt_size(r.size)} | {fmt_rate(r)} | {r.p50_us:.2f} | {r.note} |")
    if skipped:
        L += ["", "## Skipped", ""]
        L += [f"- {s['family']} / {s['what']}: {s['reason']}" for s in skipped]
    L += ["", EXPLAIN]
    return "\n".join(L)


def plots(rows: list[Row], stem: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    ring = [r for r in rows if r.family == "ring" and r.depth == 16]
    peers = [r for r in rows if r.family == "peers"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for op in dict.fromkeys(r.op for r in ring if r.unit != "bytes"):
        pts = sorted((r.rings, r.rate) for r in ring if r.op == op)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=op)
    ax.set(title="Ring path, metadata (16 in flight/ring)", xlabel="rings", ylabel="units/s (aggregate)")
    ax.grid(alpha=.3)
    if ax.lines:
        ax.legend(fontsize=8)
    ax = axes[1]
    for key in dict.fromkeys((r.op, r.size) for r in ring if r.unit == "bytes"):
        pts = sorted((r.rings, r.mb_s) for r in ring if (r.op, r.size) == key)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{key[0]} {fmt_size(key[1])}")
    mc = [r for r in rows if r.family == "limits" and r.op == "memcpy" and r.size == 512 * KiB]
    if mc:
        ax.axhline(mc[0].mb_s, color="grey", ls="--", label="memcpy 512 KiB (1 thread)")
    ax.set(title="Ring path, data (16 in flight/ring)", xlabel="rings", ylabel="MB/s (aggregate)")
    ax.set_yscale("log")
    ax.grid(alpha=.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    p = stem.with_name(stem.name + "-throughput.png")
    fig.savefig(p, dpi=90)
    plt.close(fig)
    out.append(p)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, subset, title in ((axes[0], [r for r in rows if r.family == "ring" and r.rings == 1],
                               "Ring path, 1 ring"), (axes[1], peers, "Socket: xen9p vs diod")):
        labels, p50, p99 = [], [], []
        for r in subset:
            labels.append(f"{r.target.split()[0] if r.family == 'peers' else ''} {r.op} {fmt_size(r.size)} "
                          f"d{r.depth}".strip())
            p50.append(max(r.p50_us, 0.1))
            p99.append(max(r.p99_us, 0.1))
        y = range(len(labels))
        ax.barh([i + 0.2 for i in y], p50, height=0.4, label="p50")
        ax.barh([i - 0.2 for i in y], p99, height=0.4, label="p99")
        ax.set_yticks(list(y), labels, fontsize=6)
        ax.set_xscale("log")
        ax.set(title=title, xlabel="µs per op")
        ax.grid(alpha=.3, axis="x")
        if labels:
            ax.legend(fontsize=8)
    fig.tight_layout()
    p = stem.with_name(stem.name + "-latency.png")
    fig.savefig(p, dpi=90)
    plt.close(fig)
    out.append(p)
    return out


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _server_build() -> str:
    """Which code the xen9p servers ran: "source (pure)", "installed (compiled)", ..."""
    from . import targets
    try:
        return f"{targets.WORKER_CODE} ({targets.worker_build()})"
    except targets.TargetError as e:
        return f"{targets.WORKER_CODE} (unknown: {e})"


def write_report(ctx, out: Path, argv: list[str], elapsed: float) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    stem = out / stamp
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "profile": ctx.profile.name,
            "command": " ".join(["python", "-m", "bench", *argv[1:]]) if argv and argv[0].endswith("__main__.py")
            else " ".join(argv), "host": socket.gethostname(), "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(), "python": platform.python_version(), "git": _git(), "elapsed": elapsed,
            "build": _server_build()}
    fl = floors(ctx.rows, ctx.skipped)
    doc = {"meta": meta, "profile": ctx.profile.__dict__, "rows": [r.as_dict() for r in ctx.rows],
           "skipped": ctx.skipped, "floors": fl}
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md")}
    paths["json"].write_text(json.dumps(doc, indent=1, default=str))
    paths["md"].write_text(markdown(ctx.rows, ctx.skipped, fl, meta))
    for i, p in enumerate(plots(ctx.rows, stem)):
        paths[f"png{i}"] = p
    return paths
