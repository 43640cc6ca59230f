"""Which Debian kernels the guest boots, and where each comes from: a named Debian suite, never the host's apt.

Each kernel is looked up and downloaded through a private apt configuration (its own sources.list,
lists and package cache under the harness cache), so the same kernels are tested whichever Debian
release the host runs, and the host's apt sources and state are never touched.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from xen9p_common.errors import Xen9pError

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
META_PACKAGE = "linux-image-amd64"
LISTS_MAX_AGE_S = 24 * 3600  # refresh a suite's package lists once a day


class GuestBuildError(Xen9pError):
    """The guest kernel or initramfs could not be obtained or built; the message is one line
    (for a kernel that cannot be had, it names the missing package)."""


def run_tool(what: str, cmd: list[str], timeout: float, cwd: Path | None = None) -> str:
    """A build tool's stdout; a GuestBuildError naming `what` with the tool's last line of output if it fails."""
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GuestBuildError(f"{what} failed: {e}") from e
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        raise GuestBuildError(f"{what} exited {out.returncode}: {tail[0]}")
    return out.stdout


@dataclass(frozen=True)
class KernelSource:
    name: str        # the id in test names (a Debian release name)
    suite: str       # the Debian suite its linux-image-amd64 is read from
    package_glob: str  # what the kernel package is called, for messages and the cache
    package_re: str
    primary: bool    # runs the selected suite level; otherwise all of it but fio/stress-ng (CI time)

    def matches(self, pkg: str) -> bool:
        return re.fullmatch(self.package_re, pkg) is not None


# Newest first: Debian 13's 6.12 (netfs-based v9fs) runs the whole suite, Debian 12's 6.1 the posix part.
KERNELS = (
    KernelSource("trixie", "trixie", "linux-image-6.12.*-amd64", r"linux-image-6\.12\.[0-9][\w.+~]*-amd64", True),
    KernelSource("bookworm", "bookworm", "linux-image-6.1.0-*-amd64", r"linux-image-6\.1\.0-\d+-amd64", False),
)


def plan_for(source: KernelSource, plan):
    """The suite plan (catalog.SuitePlan) this kernel runs: all of `plan` on the primary kernel; on the others
    the same checks without the fio/stress-ng script, which would double the tier's time for little news."""
    if source.primary or "suites" not in plan.scripts:
        return plan
    return replace(plan, level=f"{plan.level}-no-suites", scripts=tuple(s for s in plan.scripts if s != "suites"))


def selected_kernels(env: dict[str, str] | None = None) -> tuple[KernelSource, ...]:
    """XEN9P_KERNELS=trixie,bookworm (default: all of KERNELS), to run fewer by hand."""
    env = os.environ if env is None else env
    names = [n for n in env.get("XEN9P_KERNELS", "").split(",") if n]
    if not names:
        return KERNELS
    known = {k.name: k for k in KERNELS}
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"XEN9P_KERNELS: unknown {', '.join(bad)} (known: {', '.join(known)})")
    return tuple(known[n] for n in names)


class SuiteApt:
    """apt-get/apt-cache with a private configuration reading only `source.suite` (+ its security suite)."""

    def __init__(self, source: KernelSource, cache: Path) -> None:
        self.source = source
        self.dir = cache / "apt" / source.suite
        opt = {
            "Dir::Etc::sourcelist": str(self.dir / "sources.list"),
            "Dir::Etc::sourceparts": "-",
            "Dir::State::lists": str(self.dir / "lists"),
            "Dir::State::status": str(self.dir / "status"),
            "Dir::Cache": str(self.dir / "cache"),
            "Acquire::Languages": "none",
            "APT::Architectures": "amd64",
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else "",
        }
        self.options = [a for k, v in opt.items() if v for a in ("-o", f"{k}={v}")]

    def sources_list(self) -> str:
        s, key = self.source.suite, KEYRING
        return (f"deb [signed-by={key}] {DEBIAN_MIRROR} {s} main\n"
                f"deb [signed-by={key}] {DEBIAN_SECURITY_MIRROR} {s}-security main\n")

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        return run_tool(f"{tool} {args[0]} ({self.source.suite})", [tool, *self.options, *args], timeout=600, cwd=cwd)

    def update(self) -> None:
        """Fetch the suite's package lists unless fetched within LISTS_MAX_AGE_S."""
        stamp = self.dir / "updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S:
            return
        if not KEYRING.exists():
            raise GuestBuildError(f"{KEYRING} is missing (Debian's debian-archive-keyring)")
        for d in ("lists/partial", "cache/archives/partial"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        (self.dir / "sources.list").write_text(self.sources_list())
        (self.dir / "status").touch()
        self._run("apt-get", "update", "-q", "--error-on=any")
        stamp.touch()

    def kernel_package(self) -> str:
        """The kernel package META_PACKAGE depends on in this suite."""
        self.update()
        for m in re.finditer(r"Depends: (\S+)", self._run("apt-cache", "depends", META_PACKAGE)):
            if self.source.matches(m.group(1)):
                return m.group(1)
        raise GuestBuildError(f"{META_PACKAGE} in {self.source.suite} depends on no {self.source.package_glob}")

    def download(self, pkg: str, into: Path) -> None:
        self._run("apt-get", "download", "-q", pkg, cwd=into)


def kernel_package(source: KernelSource, cache: Path) -> str:
    """This source's current kernel package; the newest cached one when the suite cannot be read."""
    try:
        return SuiteApt(source, cache).kernel_package()
    except GuestBuildError as e:
        why = str(e)
    cached = sorted((p.name for p in (cache / "kernel").glob("linux-image-*") if p.is_dir() and source.matches(p.name)),
                    key=lambda n: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", n)])
    if cached:
        return cached[-1]
    raise GuestBuildError(f"no {source.package_glob} from Debian {source.suite} ({why}) and none cached")
