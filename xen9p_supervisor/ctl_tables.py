"""The text xen9pctl prints for status, devices, rings and metrics (without --json)."""
from __future__ import annotations

from typing import Any


def fmt_uptime(s: float | None) -> str:
    """'-' only when there is no uptime (device not connected, ring not running); seconds count from 0."""
    if s is None or s < 0:
        return "-"
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[("-" if c is None or c == "" else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def status_table(st: dict) -> str:
    d = st["daemon"]
    head = (f"xen9pd pid {d['pid']} {d['version']} on {d['platform']} (dom{d['self_domid']}), "
            f"up {fmt_uptime(d['uptime'])}, kinds {','.join(d['kinds'])}, "
            f"{d['devices']} device(s), {d['rings']} ring(s)")
    if d.get("xenstore") == "reconnecting":
        head += ", XENSTORE LOST: reconnecting (rings serve on)"
    rows = []
    for dev in st["devices"]:
        workers = " ".join(f"{r['pid'] or '-'}@{r['cpu'] if r['cpu'] is not None else '-'}" for r in dev["rings"])
        rows.append([dev["name"], dev["kind"], dev["tag"], dev["path"], dev["state"], len(dev["rings"]), workers,
                     fmt_uptime(dev["uptime"]), dev["restarts"], f"{dev.get('requests_per_s', 0):.0f}",
                     f"{dev.get('mb_per_s', 0):.2f}"])
    body = table(rows, ["DEVICE", "KIND", "TAG", "PATH", "STATE", "RINGS", "PID@CPU", "UPTIME", "RESTARTS",
                        "REQ/S", "MB/S"])
    errs = [f"  {dev['name']}: {dev['error']}" for dev in st["devices"] if dev.get("error")]
    return "\n".join([head, body] + (["errors:"] + errs if errs else []))


def devices_table(devs: list[dict]) -> str:
    return table([[d["name"], d["kind"], d["tag"], d["path"], "ro" if d.get("readonly") else "rw",
                   d["security_model"], d["state"], d["backend_state"],
                   d["num_rings"], fmt_uptime(d["uptime"]), d["restarts"]] for d in devs],
                 ["DEVICE", "KIND", "TAG", "PATH", "ACCESS", "MODEL", "STATE", "BACKEND", "RINGS", "UPTIME",
                  "RESTARTS"])


def rings_table(rings: list[dict]) -> str:
    return table([[r["name"], r["pid"], r["cpu"], r["state"], fmt_uptime(r["uptime"]), r["restarts"],
                   "/".join(str(r["exits"][k]) for k in ("requested", "crash", "timeout")),
                   f"{r.get('requests_per_s', 0):.0f}", f"{r.get('mb_per_s', 0):.2f}"] for r in rings],
                 ["RING", "PID", "CPU", "STATE", "UPTIME", "RESTARTS", "EXITS(req/crash/timeout)", "REQ/S", "MB/S"])


def metrics_text(m: dict) -> str:
    lines = [f"daemon {k} {v}" for k, v in sorted(m.get("daemon", {}).items())]
    for scope in ("devices", "rings"):
        for name, vals in sorted(m.get(scope, {}).items()):
            for k, v in sorted(vals.items()):
                lines.append(f"{name} {k} {v}")
    return "\n".join(lines)
