"""Pure tests of how the harness picks its guest kernels: named Debian suites, private apt, cache fallback,
and the vmlinux inside Debian 12's (xz) and Debian 13's (zstd) bzImages. No network, no QEMU."""
from __future__ import annotations

import lzma
import shutil
import struct
import subprocess

import pytest

from .catalog import PLANS
from .guest_image import GuestBuildError, extract_vmlinux
from .kernel_sources import KERNELS, SuiteApt, kernel_package, plan_for, selected_kernels

TRIXIE, BOOKWORM = KERNELS


def test_each_kernel_names_its_suite_and_package() -> None:
    assert [k.suite for k in KERNELS] == ["trixie", "bookworm"]
    assert TRIXIE.matches("linux-image-6.12.118+deb13-amd64")
    assert BOOKWORM.matches("linux-image-6.1.0-57-amd64")
    for other in ("linux-image-6.12.118+deb13-amd64-unsigned", "linux-image-6.12.118+deb13-amd64-dbg",
                  "linux-image-6.1.0-57-cloud-amd64", "linux-image-amd64"):
        assert not TRIXIE.matches(other) and not BOOKWORM.matches(other), other
    assert not BOOKWORM.matches("linux-image-6.12.118+deb13-amd64")


def test_selected_kernels() -> None:
    assert selected_kernels({}) == KERNELS
    assert selected_kernels({"XEN9P_KERNELS": "bookworm"}) == (BOOKWORM,)
    with pytest.raises(ValueError, match="jessie"):
        selected_kernels({"XEN9P_KERNELS": "trixie,jessie"})


@pytest.mark.parametrize("level", sorted(PLANS))
def test_secondary_kernel_runs_every_posix_check_but_not_the_suites(level: str) -> None:
    plan = PLANS[level]
    assert plan_for(TRIXIE, plan) is plan
    short = plan_for(BOOKWORM, plan)
    names = short.expected_checks()
    assert [n for n in plan.expected_checks() if not n.startswith(("fio.", "stress."))] == names
    assert short.run_conf("x")["GUEST_SCRIPTS"] == "posix"


def test_private_apt_reads_only_the_named_suite(tmp_path) -> None:
    apt = SuiteApt(BOOKWORM, tmp_path)
    opts = dict(apt.options[i + 1].split("=", 1) for i in range(0, len(apt.options), 2))
    assert opts["Dir::Etc::sourcelist"].startswith(str(tmp_path))
    assert opts["Dir::Etc::sourceparts"] == "-"  # not the host's sources.list.d
    assert opts["Dir::State::lists"].startswith(str(tmp_path)) and opts["Dir::Cache"].startswith(str(tmp_path))
    lines = apt.sources_list().splitlines()
    assert [ln.split()[-2:] for ln in lines] == [["bookworm", "main"], ["bookworm-security", "main"]]


def test_unreadable_suite_falls_back_to_the_newest_cached_kernel(tmp_path, monkeypatch) -> None:
    def offline(self):
        raise GuestBuildError("apt-get update (bookworm) exited 100: network unreachable")
    monkeypatch.setattr(SuiteApt, "kernel_package", offline)
    for name in ("linux-image-6.1.0-9-amd64", "linux-image-6.1.0-57-amd64", "linux-image-6.12.1+deb13-amd64"):
        (tmp_path / "kernel" / name).mkdir(parents=True)
    assert kernel_package(BOOKWORM, tmp_path) == "linux-image-6.1.0-57-amd64"
    shutil.rmtree(tmp_path / "kernel")
    with pytest.raises(GuestBuildError) as e:
        kernel_package(BOOKWORM, tmp_path)
    msg = str(e.value)
    assert "linux-image-6.1.0-*-amd64" in msg and "bookworm" in msg and "network unreachable" in msg
    assert "\n" not in msg


def _tiny_elf() -> bytes:
    """An ELF64 header whose one section header entry follows it: the smallest 'whole' ELF."""
    head = bytearray(64)
    head[:4] = b"\x7fELF"
    struct.pack_into("<Q", head, 0x28, 64)          # e_shoff
    struct.pack_into("<HH", head, 0x3A, 64, 1)      # e_shentsize, e_shnum
    return bytes(head) + bytes(64)


def test_vmlinux_from_an_xz_bzimage() -> None:
    elf = _tiny_elf()
    assert extract_vmlinux(b"setup code" + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"trailer") == elf
    assert extract_vmlinux(b"setup code" + lzma.compress(elf[:100], format=lzma.FORMAT_XZ)) is None  # cut short


def test_vmlinux_from_a_zstd_bzimage() -> None:
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed (Debian's zstd)")
    elf = _tiny_elf()
    packed = subprocess.run(["zstd", "-cq"], input=elf, capture_output=True, check=True).stdout
    assert extract_vmlinux(b"setup code" + packed + b"\x00trailing bytes") == elf
