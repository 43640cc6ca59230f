"""Which build of xen9p is running: the ring worker's hot modules compiled by mypyc, or pure Python.

`pip install .` compiles COMPILED_MODULES with mypyc (setup.py) when the machine has a C compiler
and Python's headers; XEN9P_PURE=1 (the Debian package, whose .deb is architecture-independent)
or a failed compile gives the pure-Python build. The .py files stay the source of truth either way:
they are what the test suite imports, and what the compiled build is made from.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util

COMPILED_MODULES = (
    "xen9p_common.ring",
    "xen9p_worker.shared.journal",
    "xen9p_worker.metrics",
    "xen9p_worker.ring_worker",
)

BUILDS = ("compiled", "pure", "mixed")  # what build() answers (a ring worker says it in "ready")


def module_build(name: str) -> str:
    """'compiled' when `name` would be imported from an extension module, else 'pure'."""
    spec = importlib.util.find_spec(name)
    origin = (spec.origin if spec else None) or ""
    return "compiled" if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)) else "pure"


def build() -> str:
    """'compiled' (every module in COMPILED_MODULES), 'pure' (none) or 'mixed' (a partial install)."""
    kinds = {module_build(m) for m in COMPILED_MODULES}
    return kinds.pop() if len(kinds) == 1 else "mixed"
