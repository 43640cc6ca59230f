"""Fuzz targets: each module has `one_input(data: bytes)`, which raises only on a real finding.

A target may keep state across inputs (a sandbox, a server) made on first use; `close()` releases it.
"""
from __future__ import annotations

NAMES = ("codec", "ring", "dispatch", "xenstore")
