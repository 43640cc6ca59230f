"""The export directory check: xen-9pfsd's kind creates a missing canonical export, never through a symlink."""
from __future__ import annotations

import os

import pytest

from xen9p_supervisor.export_dir import ExportError, canonical_problem, ensure_export


@pytest.fixture
def base(tmp_path):
    return str(tmp_path.resolve())  # no symlink above the test's own directories


@pytest.mark.parametrize("path,why", [
    ("/var/log/xen/9pfs/dom3", None),
    ("/", None),
    ("relative/dir", "is not absolute"),
    ("/var//log", "contains '//'"),
    ("/var/log/", "ends with '/'"),
    ("/var/./log", "contains a '.' component"),
    ("/var/log/..", "contains a '..' component"),
    ("/var/../etc", "contains a '..' component"),
    ("/var/lo\0g", "contains a NUL byte"),
])
def test_canonical_problem(path, why):
    assert canonical_problem(path) == why


def test_existing_directory_is_used_as_is(base):
    assert ensure_export(base, "xen_9pfs") is False
    assert ensure_export(base, "9pfs") is False


def test_missing_export_of_xen_9pfs_is_created_component_by_component(base):
    target = os.path.join(base, "log", "xen", "9pfs", "dom3")
    old = os.umask(0o022)
    try:
        assert ensure_export(target, "xen_9pfs") is True
    finally:
        os.umask(old)
    assert os.path.isdir(target)
    assert os.stat(target).st_mode & 0o777 == 0o755  # xen-9pfsd's 0777, less the umask
    assert ensure_export(target, "xen_9pfs") is False  # second time: exists


def test_missing_export_of_qemu_kind_is_refused_and_not_created(base):
    target = os.path.join(base, "missing")
    with pytest.raises(ExportError, match="does not exist on this host"):
        ensure_export(target, "9pfs")
    assert not os.path.exists(target)


@pytest.mark.parametrize("suffix", ["a/../b", "a//b", "a/b/", "a/./b"])
def test_non_canonical_missing_export_is_not_created(base, suffix):
    target = base + "/" + suffix
    with pytest.raises(ExportError, match="is not created"):
        ensure_export(target, "xen_9pfs")
    assert os.listdir(base) == []


@pytest.mark.parametrize("kind", ["xen_9pfs", "9pfs"])
def test_existing_non_directory_is_refused_for_both_kinds(base, kind):
    f = os.path.join(base, "file")
    with open(f, "w") as fh:
        fh.write("keep")
    with pytest.raises(ExportError, match="is not a directory on this host"):
        ensure_export(f, kind)
    with pytest.raises(ExportError, match="is not a directory on this host"):
        ensure_export(os.path.join(f, "below"), kind)  # a file on the way: ENOTDIR
    assert open(f).read() == "keep"


def test_never_creates_through_a_symlinked_directory(base):
    real = os.path.join(base, "real")
    os.mkdir(real)
    os.symlink(real, os.path.join(base, "link"))
    with pytest.raises(ExportError, match="symlink or not a directory.*link"):
        ensure_export(os.path.join(base, "link", "dom3"), "xen_9pfs")
    assert os.listdir(real) == []


def test_dangling_symlink_as_the_export_is_not_followed(base):
    os.symlink(os.path.join(base, "elsewhere"), os.path.join(base, "dangling"))
    with pytest.raises(ExportError, match="symlink or not a directory"):
        ensure_export(os.path.join(base, "dangling"), "xen_9pfs")
    assert not os.path.exists(os.path.join(base, "elsewhere"))


def test_unwritable_parent_gives_the_reason(base):
    if os.geteuid() == 0:
        pytest.skip("root may create directories in a read-only (mode 0555) directory")
    ro = os.path.join(base, "ro")
    os.mkdir(ro, 0o555)
    with pytest.raises(ExportError, match="cannot be created: Permission denied"):
        ensure_export(os.path.join(ro, "dom3"), "xen_9pfs")
