"""`python -m bench --quick` as CI runs it: it ran, wrote the JSON, the Markdown and the plots, with sane figures.

No timing assertions: the machines are shared; only that figures exist, are finite and are non-zero.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_bench_quick(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install .[bench])")
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--quiet", "--out", str(out),
                        "--workdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"bench failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-4000:]}"
    jsons = list(out.glob("*.json"))
    assert len(jsons) == 1, list(out.iterdir())
    stem = jsons[0].with_suffix("")
    for suffix in (".md", "-throughput.png", "-latency.png"):
        p = stem.with_name(stem.name + suffix)
        assert p.exists() and p.stat().st_size > 0, p
    doc = json.loads(jsons[0].read_text())
    rows = doc["rows"]
    assert rows, doc["skipped"]
    for row in rows:
        assert math.isfinite(row["rate"]) and row["rate"] > 0, row
        assert row["iters"] > 0 and row["seconds"] > 0, row
        if row["family"] != "limits":
            assert row["p50_us"] > 0 and row["p99_us"] >= row["p50_us"], row
            assert row["server_cpu_us"] >= 0 and row["rss_mb"] > 0, row
    # The limits need nothing: they are always there, as the reference for everything else.
    assert any(r["family"] == "limits" and r["op"] == "memcpy" for r in rows)
    # Whatever was not measured says why.
    assert all(s["reason"] for s in doc["skipped"])
    md = (stem.with_suffix(".md")).read_text()
    assert "## Floors" in md and ">= 30,000" in md
    assert doc["meta"]["build"] == "source (pure)" and "xen9p servers: source (pure)" in md
