"""xen9p_common.buildinfo: which build of a module Python would import (an extension module or a .py file); setup.py drops stale built libraries."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import runpy

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


def test_setup_forgets_extensions_an_earlier_in_tree_build_left(tmp_path):
    """A module taken off COMPILED_MODULES must not ship the .so an earlier build made of it."""
    setup_py = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "setup.py")
    drop = runpy.run_path(setup_py, run_name="not_main")["drop_built_libraries"]
    stale = tmp_path / "build" / "lib.linux-x86_64-cpython-311" / "xen9p_worker" / "fdcache.cpython-311.so"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    objects = tmp_path / "build" / "temp.linux-x86_64-cpython-311" / "x.o"
    objects.parent.mkdir(parents=True)
    objects.write_bytes(b"o")
    drop(str(tmp_path))
    assert not (tmp_path / "build" / "lib.linux-x86_64-cpython-311").exists()
    assert objects.exists()  # compiler objects stay: only what gets packed is dropped
