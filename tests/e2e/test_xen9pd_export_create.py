"""xen9pd creates a missing export for xen-9pfsd's kind as xen-9pfsd does, and only where that is safe."""
from __future__ import annotations

import os

import pytest

from tests.e2e.xen9pd_helpers import Guest, Xen9pd, xen9pd_world


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("xc").resolve())
    with xen9pd_world(tmp) as (xs, d):
        yield tmp, xs, d


def _reason(d: Xen9pd, name: str) -> str:
    logs = d.wait_log(f"{name}: disconnecting: ")
    return [x for x in logs.splitlines() if f"{name}: disconnecting: " in x][0]


def test_missing_export_of_xen_9pfs_is_created_logged_and_served(env):
    tmp, xs, d = env
    export = f"{tmp}/log/xen/9pfs/dom20"  # xl's per-guest default under Xen's log dir, absent so far
    g = Guest(xs, 20).attach(export)
    g.connect(1)
    assert os.path.isdir(export)
    d.wait_log(f"dom20/dev0: created the missing export directory {export} (kind xen_9pfs")
    assert d.device("dom20/dev0")["state"] == "connected" and d.device("dom20/dev0")["path"] == export
    g.close()


def test_missing_export_of_qemu_kind_fails_and_is_not_created(env):
    tmp, xs, d = env
    export = f"{tmp}/qemu/dom21"
    Guest(xs, 21, kind="9pfs").attach(export).wait_be(6)
    assert f"export {export} does not exist on this host" in _reason(d, "dom21/dev0")
    assert not os.path.exists(f"{tmp}/qemu")


@pytest.mark.parametrize("domid,suffix,why", [
    (22, "nc/a/../b", "contains a '..' component"),
    (23, "nc//b", "contains '//'"),
    (24, "nc/b/", "ends with '/'"),
    (25, "nc/./b", "contains a '.' component"),
])
def test_non_canonical_missing_export_fails_and_creates_nothing(env, domid, suffix, why):
    tmp, xs, d = env
    export = f"{tmp}/{suffix}"
    Guest(xs, domid).attach(export).wait_be(6)
    assert f"does not exist and is not created: the path {why}" in _reason(d, f"dom{domid}/dev0")
    assert not os.path.exists(f"{tmp}/nc")


def test_missing_export_below_a_symlink_is_not_created(env):
    tmp, xs, d = env
    os.mkdir(f"{tmp}/real")
    os.symlink(f"{tmp}/real", f"{tmp}/link")
    Guest(xs, 26).attach(f"{tmp}/link/dom26").wait_be(6)
    assert "a component is a symlink or not a directory" in _reason(d, "dom26/dev0")
    assert os.listdir(f"{tmp}/real") == []


def test_existing_file_as_export_keeps_being_refused(env):
    tmp, xs, d = env
    with open(f"{tmp}/afile", "w") as f:
        f.write("x")
    Guest(xs, 27).attach(f"{tmp}/afile").wait_be(6)
    assert f"export {tmp}/afile is not a directory on this host" in _reason(d, "dom27/dev0")
    assert open(f"{tmp}/afile").read() == "x"
