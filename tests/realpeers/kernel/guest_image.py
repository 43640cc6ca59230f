"""Builds the kernel-client test guest: Debian's kernel and a busybox initramfs with 9p modules.
Everything lands in a cache keyed by kernel version and a hash of the guest's inputs."""
from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from xen9p_common.errors import Xen9pError

GUEST_DIR = Path(__file__).resolve().parent / "guest"
GUEST_FILES = ("init", "lib.sh", "posix.sh", "posix_u.sh", "suites.sh")
# Top of the dependency graph; moddeps pulls in 9pnet, netfs, virtio_ring... in order.
ROOT_MODULES = ("virtio_pci", "virtio_console", "9pnet_fd", "9pnet_virtio", "9p")
TEST_UIDS = (65531, 65532, 65533)
KERNEL_PKG_RE = re.compile(r"linux-image-6\.1\.0-\d+-amd64")
ELF_MAGIC = b"\x7fELF"


class GuestBuildError(Xen9pError):
    """The guest kernel or initramfs could not be obtained or built; `reason` is one line."""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path          # uncompressed vmlinux (PVH entry) or the bzImage as a fallback
    initrd: Path          # base initramfs; a per-run overlay is appended at boot
    kernel_version: str


def cache_dir() -> Path:
    return Path(os.environ.get("XEN9P_CACHE") or "/var/tmp/xen9p-cache")


def _run(cmd: list[str], timeout: float, cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GuestBuildError(f"{cmd[0]} failed: {e}") from e
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        raise GuestBuildError(f"{' '.join(cmd[:3])} exited {out.returncode}: {tail[0]}")
    return out.stdout


def kernel_package(cache: Path) -> str:
    """The linux-image-6.1.0-N-amd64 that linux-image-amd64 points at; a cached one if apt cannot say."""
    try:
        text = _run(["apt-cache", "depends", "linux-image-amd64"], timeout=60)
        m = KERNEL_PKG_RE.search(text)
        if m:
            return m.group(0)
    except GuestBuildError:
        pass
    cached = sorted(p.name for p in (cache / "kernel").glob("linux-image-6.1.0-*-amd64") if p.is_dir())
    if cached:
        return cached[-1]
    raise GuestBuildError("no linux-image-6.1.0-*-amd64 package known to apt and none cached")


def fetch_kernel(cache: Path, pkg: str) -> Path:
    """Unpack only the bzImage and modules the guest needs; the deb is never installed."""
    kdir = cache / "kernel" / pkg
    if (kdir / "ready").exists():
        return kdir
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    if not found:
        _run(["apt-get", "download", pkg], timeout=600, cwd=debs)
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            raise GuestBuildError(f"apt-get download {pkg} produced no .deb")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        _run(["dpkg-deb", "-x", str(found[-1]), tmp], timeout=600)
        root = Path(tmp)
        bz = sorted(root.glob("boot/vmlinuz-*"))
        if not bz:
            raise GuestBuildError(f"{found[-1].name} has no boot/vmlinuz-*")
        kver = bz[0].name[len("vmlinuz-"):]
        moddir = root / "lib" / "modules" / kver
        shutil.rmtree(kdir, ignore_errors=True)
        (kdir / "modules").mkdir(parents=True)
        shutil.copy2(bz[0], kdir / "vmlinuz")
        for rel in module_load_order(moddir, ROOT_MODULES):
            dst = kdir / "modules" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(moddir / rel, dst)
        (kdir / "modules.order").write_text("\n".join(module_load_order(moddir, ROOT_MODULES)) + "\n")
        (kdir / "version").write_text(kver + "\n")
    vmlinux = extract_vmlinux((kdir / "vmlinuz").read_bytes())
    if vmlinux is not None:
        (kdir / "vmlinux").write_bytes(vmlinux)
    (kdir / "ready").write_text("ok\n")
    return kdir


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage; QEMU PVH-boots it and skips in-guest decompression."""
    decoders = (
        (b"\xfd7zXZ\x00", lambda b: lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(b)),
        (b"\x1f\x8b\x08", lambda b: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(b)),
    )
    for magic, decode in decoders:
        at = bzimage.find(magic)
        while at >= 0:
            try:
                out = decode(bzimage[at:])
            except (lzma.LZMAError, zlib.error, EOFError):
                out = b""
            if out.startswith(ELF_MAGIC):
                return out
            at = bzimage.find(magic, at + 1)
    return None


def _module_depends(path: Path) -> list[str]:
    data = path.read_bytes()
    if path.suffix == ".xz":
        data = lzma.decompress(data)
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
    if not m:
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def module_load_order(moddir: Path, roots: tuple[str, ...]) -> list[str]:
    """Relative .ko paths, every module after the modules it depends on (read from .modinfo)."""
    index: dict[str, str] = {}
    for path in moddir.rglob("*.ko*"):
        stem = path.name.split(".ko")[0].replace("-", "_")
        index[stem] = str(path.relative_to(moddir))
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            return  # built into the kernel
        for dep in _module_depends(moddir / index[name]):
            visit(dep)
        order.append(index[name])

    for root in roots:
        visit(root)
    return order


def newc_archive(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio 'newc' archive of (path, mode, data) entries; a symlink's data is its target."""
    out = bytearray()

    def put(name: str, mode: int, data: bytes, ino: int) -> None:
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(name.encode() + b"\x00")
        out.extend(b"\x00" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\x00" * (-len(out) % 4))

    for ino, (name, mode, data) in enumerate(entries, start=1):
        put(name, mode, data, ino)
    put("TRAILER!!!", 0, b"", 0)
    return bytes(out)


DIR, FILE, EXE, LINK = 0o040755, 0o100644, 0o100755, 0o120777


def _busybox() -> Path:
    for cand in ("/bin/busybox", "/usr/bin/busybox"):
        p = Path(cand)
        if p.exists() and _is_static(p):
            return p
    raise GuestBuildError("busybox-static is not installed (need a statically linked busybox)")


def _is_static(path: Path) -> bool:
    # A dynamically linked ELF has a PT_INTERP program header naming the loader.
    return b"/lib64/ld-linux" not in path.read_bytes()[:8192]


def _etc_files() -> list[tuple[str, int, bytes]]:
    users = ["root:x:0:0:root:/root:/bin/sh"] + [f"t{u}:x:{u}:{u}::/tmp:/bin/sh" for u in TEST_UIDS]
    groups = ["root:x:0:"] + [f"t{u}:x:{u}:" for u in TEST_UIDS]
    return [("etc", DIR, b""), ("etc/passwd", FILE, ("\n".join(users) + "\n").encode()),
            ("etc/group", FILE, ("\n".join(groups) + "\n").encode())]


def inputs_hash(busybox: Path) -> str:
    h = hashlib.sha256()
    for name in GUEST_FILES:
        h.update(name.encode() + b"\0" + (GUEST_DIR / name).read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(hashlib.sha256(busybox.read_bytes()).digest())
    return h.hexdigest()[:16]


def build_initramfs(kdir: Path, out: Path, busybox: Path) -> None:
    entries: list[tuple[str, int, bytes]] = [(d, DIR, b"") for d in
                                             ("bin", "sbin", "proc", "sys", "dev", "tmp", "mnt", "lib", "lib/modules")]
    entries += [("bin/busybox", EXE, busybox.read_bytes()), ("bin/sh", LINK, b"busybox")]
    entries += _etc_files()
    for name in GUEST_FILES:
        mode = EXE if name == "init" else FILE
        entries.append((name, mode, (GUEST_DIR / name).read_bytes()))
    order: list[str] = []
    dirs: set[str] = set()
    for rel in (kdir / "modules.order").read_text().split():
        data = (kdir / "modules" / rel).read_bytes()
        if rel.endswith(".xz"):  # busybox insmod wants a plain ELF object
            data, rel = lzma.decompress(data), rel[:-3]
        parts = Path(rel).parts
        for i in range(1, len(parts)):
            d = "lib/modules/" + "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append((d, DIR, b""))
        entries.append(("lib/modules/" + rel, FILE, data))
        order.append(rel)
    entries.append(("modules.order", FILE, ("\n".join(order) + "\n").encode()))
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(newc_archive(entries), compresslevel=1))
    tmp.replace(out)


def run_overlay(run_conf: dict[str, str]) -> bytes:
    """A gzip'd cpio holding /run.conf; appended to the base initramfs (the kernel unpacks both)."""
    lines = [f"{k}='{v}'" for k, v in run_conf.items()]
    if any("'" in v for v in run_conf.values()):
        raise GuestBuildError("run.conf values may not contain single quotes")
    return gzip.compress(newc_archive([("run.conf", FILE, ("\n".join(lines) + "\n").encode())]), compresslevel=1)


def build_guest(cache: Path | None = None) -> GuestImage:
    """Kernel + base initramfs, from the cache when the kernel version and guest inputs match."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    busybox = _busybox()
    pkg = kernel_package(cache)
    kdir = fetch_kernel(cache, pkg)
    kver = (kdir / "version").read_text().strip()
    initrd = cache / "initramfs" / f"{kver}-{inputs_hash(busybox)}.cpio.gz"
    if not initrd.exists():
        initrd.parent.mkdir(parents=True, exist_ok=True)
        build_initramfs(kdir, initrd, busybox)
    kernel = kdir / "vmlinux" if (kdir / "vmlinux").exists() else kdir / "vmlinuz"
    return GuestImage(kernel=kernel, initrd=initrd, kernel_version=kver)
