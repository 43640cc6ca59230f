"""Metadata lives in setup.cfg; this file only adds the compiled build of the ring worker's hot modules.

mypyc compiles xen9p_common.buildinfo.COMPILED_MODULES (plain typed Python) into C extensions, which
Python imports in preference to the .py files installed beside them. XEN9P_PURE=1 builds without
them (the Debian package does: its .deb is "Architecture: all"); so does a machine without mypyc in
the build environment. A failed C compile (no gcc, no Python.h) leaves the pure build, with pip's
warning. A module that does not type-check fails the build: that is a bug to fix, not to hide.
"""
import glob
import os
import shutil

from setuptools import setup


def compiled_extensions() -> list:
    if os.environ.get("XEN9P_PURE", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return []
    info: dict = {}
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "xen9p_common", "buildinfo.py")) as f:
        exec(compile(f.read(), "buildinfo.py", "exec"), info)
    paths = [m.replace(".", "/") + ".py" for m in info["COMPILED_MODULES"]]
    # Type-checked as compiled: the modules they import are read for their types only (silent), and
    # third-party packages without type information count as untyped.
    extensions = mypycify(["--follow-imports=silent", "--ignore-missing-imports", *paths], opt_level="3")
    for ext in extensions:
        ext.optional = True  # no compiler or headers: the pure build, not a failed install
    return extensions


def drop_built_libraries(root: str) -> None:
    """Forget the extensions an earlier in-tree build left in build/lib*: a module taken off
    COMPILED_MODULES would otherwise ship its stale .so, which Python imports ahead of its .py."""
    for d in glob.glob(os.path.join(root, "build", "lib*")):
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":  # how pip (setuptools.build_meta) runs it
    drop_built_libraries(os.path.dirname(os.path.abspath(__file__)))
    setup(ext_modules=compiled_extensions())
