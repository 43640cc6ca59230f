"""What xen9psim prints: a guest's summary, the demo's live progress line and its final table.

Pure formatting over summary dicts and GuestProc state; the callers decide where the lines go.
"""
from __future__ import annotations

import time


def guest_report(domid: int, tag: str, summary: dict) -> list[str]:
    """The lines `xen9psim guest` prints for a summary from run_guest()."""
    lines = [f"dom{domid} tag {tag}: {summary.get('frontend', 'linux')} guest, {summary.get('version', '9P2000.L')}, "
             f"msize {summary['msize']}, {summary['rings']} rings of order {summary['ring_order']}"
             + (f", {summary['live_updates']} live update(s)" if summary.get("live_updates") else "")]
    for w in summary["workloads"]:
        lines.append(f"  {w['workload']:<9} {w['ops']:>7} ops {w['bytes'] / (1 << 20):>9.1f} MiB "
                     f"{w['seconds']:>7.2f} s {w['mb_per_s']:>8.1f} MB/s {w['errors']:>3} errors")
        for d in w["details"]:
            lines.append(f"    ! {d}")
    lines.append(f"  total: {summary['ops']} ops, {summary['requests']} 9P requests, "
                 f"{summary['mb_per_s']} MB/s, {summary['errors']} errors")
    return lines


def progress_line(guests, t0: float) -> str:
    """One line of live progress for the demo's guests (GuestProc), t0 the monotonic start."""
    parts = []
    for g in guests:
        pr = g.summary or g.progress
        state = "done" if g.summary else ("running" if g.mounted else "mounting")
        parts.append(f"dom{g.domid} {g.model}: {pr['ops']} ops {pr['bytes'] / (1 << 20):.1f} MiB "
                     f"{pr['errors']} err ({state})")
    return f"[{time.monotonic() - t0:6.1f}s] " + " | ".join(parts)


def report_rows(guests) -> list[dict]:
    """The demo's final report, one dict per guest (also its --json form); no summary counts as an error."""
    rows = []
    for g in guests:
        s = g.summary or {}
        rows.append({"guest": f"dom{g.domid}", "frontend": g.frontend, "model": g.model, "workloads": g.workloads,
                     "live_updates": s.get("live_updates", 0),
                     "ops": s.get("ops", 0), "requests": s.get("requests", 0),
                     "mib": round(s.get("bytes", 0) / (1 << 20), 1), "mb_per_s": s.get("mb_per_s", 0.0),
                     "errors": s.get("errors", 1) if s else 1,
                     "details": [d for w in s.get("workloads", []) for d in w["details"]]})
    return rows


def report_table(rows: list[dict]) -> list[str]:
    """report_rows() as a table (blank line before and after), then each guest's error details."""
    lines = [f"\n{'guest':<6} {'kernel':<8} {'model':<13} {'workloads':<30} {'ops':>7} {'9P reqs':>8} {'MiB':>8} "
             f"{'MB/s':>7} {'errors':>6}"]
    for r in rows:
        lines.append(f"{r['guest']:<6} {r['frontend']:<8} {r['model']:<13} {r['workloads']:<30} {r['ops']:>7} "
                     f"{r['requests']:>8} {r['mib']:>8} {r['mb_per_s']:>7} {r['errors']:>6}")
    for r in rows:
        for d in r["details"]:
            lines.append(f"  ! {r['guest']} {d}")
    lines.append("")
    return lines
