"""Guest workloads over the 9P client (smoke, fsstress, copy, untar, readdir, locks) for the simulated guest.

Each runs in its own directory under the mount root, checks what it reads against what it wrote, and returns a Summary.
"""
from __future__ import annotations

import errno
import hashlib
import io
import random
import tarfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from ...client import Fid, P9Error
from ...errors import Xen9pError
from ...p9 import constants as c


@dataclass
class Progress:
    """Counters a workload bumps as it goes; read by a progress display in another thread."""

    ops: int = 0
    bytes: int = 0
    errors: int = 0

    def op(self, nbytes: int = 0) -> None:
        self.ops += 1
        self.bytes += nbytes


@dataclass
class Summary:
    workload: str
    ops: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / (1 << 20) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mb_per_s"] = round(self.mb_per_s, 2)
        d["seconds"] = round(self.seconds, 3)
        return d

    def line(self) -> str:
        return (f"{self.workload}: {self.ops} ops, {self.bytes / (1 << 20):.1f} MiB in {self.seconds:.2f} s "
                f"({self.mb_per_s:.1f} MB/s), {self.errors} errors")


class Check:
    """Collects verification failures without stopping the workload."""

    def __init__(self, progress: Progress, details: list[str]) -> None:
        self.progress = progress
        self.details = details

    def __call__(self, ok: bool, what: str) -> None:
        if not ok:
            self.progress.errors += 1
            if len(self.details) < 20:
                self.details.append(what)


WorkloadFn = Callable[[Fid, random.Random, int, Progress, Check], None]


def _pattern(rnd: random.Random, n: int) -> bytes:
    return rnd.randbytes(n)


def _write_file(d: Fid, name: str, data: bytes, p: Progress, mode: int = 0o644) -> None:
    with d.create(name, c.L_O_RDWR | c.L_O_CREAT | c.L_O_TRUNC, mode) as f:
        f.write(data, 0)
    p.op(len(data))


def _read_file(d: Fid, name: str, p: Progress) -> bytes:
    with d.open_path([name], c.L_O_RDONLY) as f:
        data = f.read(0)
    p.op(len(data))
    return data


# -- smoke --------------------------------------------------------------------------

def smoke(d: Fid, rnd: random.Random, scale: int, p: Progress, check: Check) -> None:
    """One of each common operation, each checked."""
    payload = b"hello from a simulated guest\n" * 64
    _write_file(d, "hello.txt", payload, p)
    check(_read_file(d, "hello.txt", p) == payload, "smoke: read back differs")
    with d.walk("hello.txt") as f:
        st = f.getattr()
    p.op()
    check(st.size == len(payload), f"smoke: size {st.size} != {len(payload)}")
    d.mkdir("sub", 0o755)
    p.op()
    d.rename("hello.txt", d, "renamed.txt")
    p.op()
    names = set(d.listdir())
    p.op()
    check(names == {"renamed.txt", "sub"}, f"smoke: listing {sorted(names)}")
    d.symlink("link", "renamed.txt")
    with d.walk("link") as ln:
        check(ln.readlink() == "renamed.txt", "smoke: readlink")
    p.op()
    with d.open_path(["renamed.txt"], c.L_O_RDWR) as f:
        f.setattr(size=5)
        f.fsync()
        check(f.read(0) == payload[:5], "smoke: truncate")
    p.op()
    d.statfs()
    p.op()
    d.unlink("link")
    d.unlink("renamed.txt")
    d.rmdir("sub")
    p.op()
    check(d.listdir() == [], "smoke: directory not empty after cleanup")


# -- fsstress -----------------------------------------------------------------------

def fsstress(d: Fid, rnd: random.Random, scale: int, p: Progress, check: Check) -> None:
    """Random mixed operations, every result compared with an in-memory model of the tree."""
    files: dict[str, bytearray] = {}
    dirs: set[str] = {""}
    counter = 0

    def parent_fid(path: str) -> Fid:
        return d.walk(path.rsplit("/", 1)[0]) if "/" in path else d.walk()

    def leaf(path: str) -> str:
        return path.rsplit("/", 1)[-1]

    def new_name(kind: str) -> str:
        nonlocal counter
        counter += 1
        parent = rnd.choice(sorted(dirs))
        return f"{parent}/{kind}{counter}" if parent else f"{kind}{counter}"

    def empty_dirs() -> list[str]:
        busy = {x.rsplit("/", 1)[0] for x in list(files) + list(dirs) if "/" in x}
        return sorted(x for x in dirs if x and x not in busy)

    for _ in range(300 * scale):
        op = rnd.choices(["create", "write", "read", "truncate", "unlink", "mkdir", "rmdir",
                          "rename", "readdir", "stat"], [10, 20, 20, 5, 6, 5, 3, 6, 5, 10])[0]
        if op in ("write", "read", "truncate", "unlink", "rename", "stat") and not files:
            op = "create"
        if op == "create":
            path = new_name("f")
            data = _pattern(rnd, rnd.randrange(0, 64 * 1024))
            with parent_fid(path) as pd:
                _write_file(pd, leaf(path), data, p)
            files[path] = bytearray(data)
        elif op == "write":
            path = rnd.choice(sorted(files))
            model = files[path]
            off = rnd.randrange(0, len(model) + 4096)
            data = _pattern(rnd, rnd.randrange(1, 32 * 1024))
            with d.open_path(path, c.L_O_RDWR) as f:
                f.write(data, off)
            p.op(len(data))
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off:off + len(data)] = data
        elif op == "read":
            path = rnd.choice(sorted(files))
            model = files[path]
            off = rnd.randrange(0, len(model) + 1)
            n = rnd.randrange(0, 48 * 1024)
            with d.open_path(path, c.L_O_RDONLY) as f:
                got = f.read(off, n)
            p.op(len(got))
            check(got == bytes(model[off:off + n]), f"fsstress: read {path}@{off}+{n} differs")
        elif op == "truncate":
            path = rnd.choice(sorted(files))
            size = rnd.randrange(0, 80 * 1024)
            with d.walk(path) as f:
                f.setattr(size=size)
            p.op()
            model = files[path]
            del model[size:]
            model.extend(bytes(size - len(model)))
        elif op == "unlink":
            path = rnd.choice(sorted(files))
            with parent_fid(path) as pd:
                pd.unlink(leaf(path))
            p.op()
            del files[path]
        elif op == "mkdir":
            path = new_name("d")
            with parent_fid(path) as pd:
                pd.mkdir(leaf(path), 0o755)
            p.op()
            dirs.add(path)
        elif op == "rmdir":
            cands = empty_dirs()
            if not cands:
                continue
            path = rnd.choice(cands)
            with parent_fid(path) as pd:
                pd.rmdir(leaf(path))
            p.op()
            dirs.discard(path)
        elif op == "rename":
            old = rnd.choice(sorted(files))
            new = new_name("r")
            with parent_fid(old) as od, parent_fid(new) as nd:
                od.rename(leaf(old), nd, leaf(new))
            p.op()
            files[new] = files.pop(old)
        elif op == "readdir":
            path = rnd.choice(sorted(dirs))
            with d.walk(path) as dd:
                got = set(dd.listdir())
            p.op()
            want = {leaf(x) for x in list(files) + [y for y in dirs if y]
                    if (x.rsplit("/", 1)[0] if "/" in x else "") == path}
            check(got == want, f"fsstress: listing of {path or '/'} {sorted(got)} != {sorted(want)}")
        elif op == "stat":
            path = rnd.choice(sorted(files))
            with d.walk(path) as f:
                size = f.getattr().size
            p.op()
            check(size == len(files[path]), f"fsstress: size of {path} {size} != {len(files[path])}")
    # Final sweep: every file whole, then the tree removed.
    for path in sorted(files):
        with parent_fid(path) as pd:
            check(_read_file(pd, leaf(path), p) == bytes(files[path]), f"fsstress: final {path} differs")
    _remove_tree(d, p)


# -- copy ---------------------------------------------------------------------------

def copy(d: Fid, rnd: random.Random, scale: int, p: Progress, check: Check) -> None:
    """A big file written, read back and copied, compared by SHA-256."""
    size = 8 * (1 << 20) * scale
    chunk = 1 << 20
    src_sum = hashlib.sha256()
    with d.create("big.bin", c.L_O_WRONLY | c.L_O_CREAT | c.L_O_TRUNC, 0o644) as f:
        for off in range(0, size, chunk):
            block = _pattern(rnd, min(chunk, size - off))
            src_sum.update(block)
            f.write(block, off)
            p.op(len(block))
    got = hashlib.sha256()
    with d.open_path(["big.bin"], c.L_O_RDONLY) as src, \
            d.create("copy.bin", c.L_O_WRONLY | c.L_O_CREAT | c.L_O_TRUNC, 0o644) as dst:
        for off in range(0, size, chunk):
            block = src.read(off, chunk)
            got.update(block)
            dst.write(block, off)
            p.op(2 * len(block))
    check(got.hexdigest() == src_sum.hexdigest(), "copy: read-back checksum differs")
    again = hashlib.sha256()
    with d.open_path(["copy.bin"], c.L_O_RDONLY) as f:
        for off in range(0, size, chunk):
            block = f.read(off, chunk)
            again.update(block)
            p.op(len(block))
    check(again.hexdigest() == src_sum.hexdigest(), "copy: copy checksum differs")
    d.unlink("big.bin")
    d.unlink("copy.bin")
    p.op()


# -- untar --------------------------------------------------------------------------

def make_source_tarball(rnd: random.Random, scale: int) -> bytes:
    """A generated source tree (dirs of .c/.h files, a Makefile, symlinks) as a tar archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("src")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for i in range(4 * scale):
            top = f"src/mod{i}"
            for sub in ("", "/include", "/tests"):
                info = tarfile.TarInfo(top + sub)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for j in range(12):
                sub = ("", "/include", "/tests")[j % 3]
                ext = ".h" if sub == "/include" else ".c"
                body = "".join(f"int f{i}_{j}_{k}(int x) {{ return x * {rnd.randrange(1000)}; }}\n"
                               for k in range(rnd.randrange(5, 400))).encode()
                info = tarfile.TarInfo(f"{top}{sub}/file{j}{ext}")
                info.size, info.mode = len(body), 0o644 if j % 5 else 0o755
                tar.addfile(info, io.BytesIO(body))
            link = tarfile.TarInfo(f"{top}/latest.c")
            link.type, link.linkname = tarfile.SYMTYPE, "file0.c"
            tar.addfile(link)
        mk = b"all:\n\t@echo built\n"
        info = tarfile.TarInfo("src/Makefile")
        info.size = len(mk)
        tar.addfile(info, io.BytesIO(mk))
    return buf.getvalue()


def untar(d: Fid, rnd: random.Random, scale: int, p: Progress, check: Check) -> None:
    """Unpack a generated source tree through 9P, then walk it and compare every file."""
    archive = make_source_tarball(rnd, scale)
    expected: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        for mbr in members:
            parent, _, name = mbr.name.rpartition("/")
            with d.walk(parent) as pd:
                if mbr.isdir():
                    pd.mkdir(name, mbr.mode)
                    p.op()
                elif mbr.issym():
                    pd.symlink(name, mbr.linkname)
                    p.op()
                    expected[mbr.name] = b"->" + mbr.linkname.encode()
                else:
                    data = tar.extractfile(mbr).read()
                    _write_file(pd, name, data, p, mbr.mode)
                    expected[mbr.name] = data
    for path, want in sorted(expected.items()):
        with d.walk(path) as f:
            st = f.getattr()
            if want.startswith(b"->"):
                check(f.readlink().encode() == want[2:], f"untar: symlink {path}")
                p.op()
                continue
        parent, _, name = path.rpartition("/")
        with d.walk(parent) as pd:
            check(_read_file(pd, name, p) == want, f"untar: {path} differs")
        check(st.size == len(want), f"untar: size of {path}")
    _remove_tree(d, p)


# -- readdir ------------------------------------------------------------------------

def readdir(d: Fid, rnd: random.Random, scale: int, p: Progress, check: Check) -> None:
    """A big directory listed whole several times with small and large Treaddir counts."""
    n = 400 * scale
    names = {f"entry-{i:05d}-{rnd.randrange(1 << 30):x}" for i in range(n)}
    for name in sorted(names):
        with d.create(name, c.L_O_WRONLY | c.L_O_CREAT, 0o644):
            pass
        p.op()
    for count in (256, 4096, d.client.iosize):
        with d.walk() as dd:
            dd.open(c.L_O_RDONLY | c.L_O_DIRECTORY)
            got = {e.name for e in dd.readdir(count) if e.name not in (".", "..")}
        p.op()
        check(got == names, f"readdir: count {count}: {len(got)} names, want {len(names)}")
    for name in sorted(names):
        d.unlink(name)
        p.op()


# -- locks --------------------------------------------------------------------------

def locks(d: Fid, rnd: random.Random, scale: int, p: Progress, check: Check) -> None:
    """POSIX byte-range locks between two lock owners on two fids of one file."""
    _write_file(d, "locked", b"x" * 4096, p)
    with d.open_path(["locked"], c.L_O_RDWR) as a, d.open_path(["locked"], c.L_O_RDWR) as b:
        for i in range(20 * scale):
            start = rnd.randrange(0, 4000)
            check(a.lock(c.LOCK_TYPE_WRLCK, start, 64, proc_id=1, client_id="guest-a") == c.LOCK_SUCCESS,
                  "locks: first write lock refused")
            p.op()
            g = b.getlock(c.LOCK_TYPE_WRLCK, start, 64, proc_id=2, client_id="guest-b")
            p.op()
            check(g.type == c.LOCK_TYPE_WRLCK, f"locks: getlock sees type {g.type}, want the conflicting write lock")
            st = b.lock(c.LOCK_TYPE_WRLCK, start + 10, 8, proc_id=2, client_id="guest-b")
            p.op()
            check(st == c.LOCK_BLOCKED, f"locks: conflicting lock got status {st}, want BLOCKED")
            a.lock(c.LOCK_TYPE_UNLCK, start, 64, proc_id=1, client_id="guest-a")
            p.op()
            st = b.lock(c.LOCK_TYPE_WRLCK, start + 10, 8, proc_id=2, client_id="guest-b")
            p.op()
            check(st == c.LOCK_SUCCESS, f"locks: lock after unlock got status {st}")
            b.lock(c.LOCK_TYPE_UNLCK, 0, 0, proc_id=2, client_id="guest-b")
            p.op()
    d.unlink("locked")
    p.op()


# -- plumbing -----------------------------------------------------------------------

WORKLOADS: dict[str, WorkloadFn] = {
    "smoke": smoke, "fsstress": fsstress, "copy": copy, "untar": untar, "readdir": readdir, "locks": locks,
}


def _remove_tree(d: Fid, p: Progress) -> None:
    """rm -r of everything below d (d itself stays)."""
    with d.walk() as dd:
        dd.open(c.L_O_RDONLY | c.L_O_DIRECTORY)
        entries = [e for e in dd.readdir() if e.name not in (".", "..")]
    for e in entries:
        if e.qid.type & 0x80:
            with d.walk([e.name]) as sub:
                _remove_tree(sub, p)
            d.rmdir(e.name)
        else:
            d.unlink(e.name)
        p.op()


def run_workload(name: str, root: Fid, *, seed: int = 1, scale: int = 1,
                 progress: Progress | None = None, workdir: str | None = None) -> Summary:
    """Run one workload in a fresh directory under `root`; failures are counted, never raised."""
    fn = WORKLOADS.get(name)
    if fn is None:
        raise ValueError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")
    p = progress or Progress()
    summary = Summary(name)
    check = Check(p, summary.details)
    rnd = random.Random(f"{name}-{seed}")
    ops0, bytes0, err0 = p.ops, p.bytes, p.errors
    workdir = workdir or f"wl-{name}-{seed}"
    t0 = time.monotonic()
    try:
        try:
            root.mkdir(workdir, 0o755)
        except P9Error as e:
            if e.errno != errno.EEXIST:
                raise
        with root.walk([workdir]) as d:
            fn(d, rnd, max(1, scale), p, check)
        root.rmdir(workdir)
    except (Xen9pError, OSError) as e:
        check(False, f"{name}: {type(e).__name__}: {e}")
    summary.seconds = time.monotonic() - t0
    summary.ops, summary.bytes, summary.errors = p.ops - ops0, p.bytes - bytes0, p.errors - err0
    return summary
