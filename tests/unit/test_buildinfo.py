"""xen9p_common.buildinfo: which build of a module Python would import (an extension module or a .py file)."""
from __future__ import annotations

import importlib.machinery
import importlib.util

import pytest

from xen9p_common import buildinfo


def test_a_py_module_is_pure_and_an_extension_module_is_compiled():
    assert buildinfo.module_build("json") == "pure"
    ext = next((m for m in ("_json", "_csv", "_struct", "math", "_ctypes", "_bz2", "_asyncio", "_hashlib")
                if (s := importlib.util.find_spec(m)) and s.origin
                and s.origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))), None)
    if ext is None:
        pytest.skip("this Python has no standard module built as a shared library to compare with")
    assert buildinfo.module_build(ext) == "compiled"


def test_build_names_one_kind_or_mixed(monkeypatch):
    kinds = iter(["compiled", "pure", "compiled", "compiled"])
    monkeypatch.setattr(buildinfo, "module_build", lambda name: next(kinds))
    assert buildinfo.build() == "mixed"
    monkeypatch.setattr(buildinfo, "module_build", lambda name: "compiled")
    assert buildinfo.build() == "compiled"
    assert set(buildinfo.BUILDS) == {"compiled", "pure", "mixed"}


def test_every_compiled_module_exists_as_python_source():
    for name in buildinfo.COMPILED_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None, name
