"""Simulated-guest workloads on directory trees: untar (a generated source tarball, verified) and readdir.

make_source_tarball() builds the archive in memory, so the workload needs nothing from the host.
"""
from __future__ import annotations

import io
import random
import tarfile

from xen9p_sim.client import Fid
from xen9p_common.p9 import constants as c
from xen9p_sim.workloads.kit import Check, Progress, read_file, remove_tree, write_file


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
                    write_file(pd, name, data, p, mbr.mode)
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
            check(read_file(pd, name, p) == want, f"untar: {path} differs")
        check(st.size == len(want), f"untar: size of {path}")
    remove_tree(d, p)


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
