"""The Debian package: version agreement, and `./xen9p-dev deb` building a lintian-clean .deb with the
files, conffiles and dependencies an operator relies on (`apt install ./xen9p_*.deb`)."""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_TOOLS = ("dpkg-buildpackage", "dh", "pybuild", "lintian", "dpkg-deb")


def setup_cfg_version() -> str:
    c = configparser.ConfigParser()
    c.read(ROOT / "setup.cfg")
    return c["metadata"]["version"]


def changelog_version() -> str:
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    m = re.match(r"^xen9p \(([^)]+)\) ", first)
    assert m, f"debian/changelog's first line is not a 'xen9p (VERSION) ...' entry: {first!r}"
    return m.group(1)


def test_changelog_agrees_with_setup_cfg():
    # setup.cfg is the version's one home; the package must not claim another.
    assert changelog_version() == setup_cfg_version(), \
        "debian/changelog disagrees with setup.cfg's version: add an entry with `dch -v VERSION`"


def test_xen9p_dev_deb_refuses_a_changelog_that_disagrees(tmp_path):
    # A copy of the tree whose changelog claims another version: the build stops before building.
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".venv", ".git", "dist", "build", "__pycache__"))
    cl = tree / "debian" / "changelog"
    cl.write_text(cl.read_text().replace(f"xen9p ({setup_cfg_version()})", "xen9p (9.9.9)", 1))
    r = subprocess.run(["bash", str(tree / "xen9p-dev"), "deb", str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "debian/changelog says 9.9.9" in r.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.deb"))


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> tuple[Path, str]:
    missing = [t for t in BUILD_TOOLS if shutil.which(t) is None]
    if missing and os.geteuid() != 0:
        pytest.skip(f"Debian build tools missing ({', '.join(missing)}) and not root to apt-get install them")
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run(["./xen9p-dev", "deb", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and missing and any(shutil.which(t) is None for t in BUILD_TOOLS):
        pytest.skip(f"Debian build tools missing ({', '.join(missing)}) and apt-get could not install them")
    assert r.returncode == 0, f"./xen9p-dev deb failed:\n{r.stdout}\n{r.stderr}"
    debs = list(out.glob("xen9p_*_all.deb"))
    assert len(debs) == 1, debs
    return debs[0], r.stdout + r.stderr


def _dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


def test_deb_is_named_for_the_setup_cfg_version_and_lintian_finds_no_error(deb):
    path, log = deb
    assert path.name == f"xen9p_{setup_cfg_version()}_all.deb"
    assert _dpkg_deb("-f", str(path), "Version").strip() == setup_cfg_version()
    # xen9p-dev runs lintian with --fail-on error (a non-zero exit fails the fixture); no E: line either.
    assert not [ln for ln in log.splitlines() if ln.startswith("E: ")], log


def test_deb_installs_the_commands_unit_configuration_and_docs(deb):
    path, _ = deb
    listing = _dpkg_deb("-c", str(path))
    files = {line.split()[-1].lstrip(".") for line in listing.splitlines() if not line.startswith("d")}
    for f in ("/usr/bin/xen9pd", "/usr/bin/xen9pctl", "/usr/bin/xen9psim", "/etc/default/xen9pd", "/etc/xen9p/xen9pd.toml", "/usr/share/doc/xen9p/README.md",
              "/usr/share/doc/xen9p/ARCHITECTURE.md", "/usr/share/doc/xen9p/copyright"):
        assert f in files, f"{f} not in the package"
    assert any(f.startswith("/usr/lib/python3/dist-packages/xen9p_worker/") for f in files)
    assert not any("/dist-packages/bench/" in f for f in files), "the benchmark harness is not product"
    # dh_installsystemd puts the unit where the build release's systemd looks: /lib on Debian 12,
    # /usr/lib on 13 (merged /usr; lintian's aliased-location error otherwise).
    units = [f for f in files if f in ("/lib/systemd/system/xen9pd.service", "/usr/lib/systemd/system/xen9pd.service")]
    assert len(units) == 1, f"one xen9pd.service expected: {units}"
    # The unit starts the command where the package puts it.
    unit = subprocess.run(f"dpkg-deb --fsys-tarfile {path} | tar -xOf - .{units[0]}",
                          shell=True, capture_output=True, text=True, check=True).stdout
    assert re.search(r"^ExecStart=/usr/bin/xen9pd\b", unit, re.M)


def test_deb_marks_configuration_as_conffiles_and_enables_the_unit(deb, tmp_path):
    path, _ = deb
    subprocess.run(["dpkg-deb", "-e", str(path), str(tmp_path)], check=True)
    assert set((tmp_path / "conffiles").read_text().split()) == {"/etc/default/xen9pd", "/etc/xen9p/xen9pd.toml"}
    postinst = (tmp_path / "postinst").read_text()
    assert "deb-systemd-helper enable 'xen9pd.service'" in postinst
    assert "purge" in (tmp_path / "postrm").read_text()


def test_deb_depends_on_the_debian_python_packages(deb):
    path, _ = deb
    depends = {d.strip().split()[0] for d in _dpkg_deb("-f", str(path), "Depends").split(",")}
    assert {"python3-zmq", "python3-psutil", "python3-pyxs", "python3-prometheus-client"} <= depends
