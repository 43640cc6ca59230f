"""The fsstress simulated-guest workload: random creates, writes, renames, links and removals, checked.

It keeps a model of the tree it made and compares every file with it at the end.
"""
from __future__ import annotations

import random

from xen9p_sim.client import Fid
from xen9p_common.p9 import constants as c
from xen9p_sim.workloads.kit import Check, Progress, pattern, read_file, remove_tree, write_file


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
            data = pattern(rnd, rnd.randrange(0, 64 * 1024))
            with parent_fid(path) as pd:
                write_file(pd, leaf(path), data, p)
            files[path] = bytearray(data)
        elif op == "write":
            path = rnd.choice(sorted(files))
            model = files[path]
            off = rnd.randrange(0, len(model) + 4096)
            data = pattern(rnd, rnd.randrange(1, 32 * 1024))
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
            check(read_file(pd, leaf(path), p) == bytes(files[path]), f"fsstress: final {path} differs")
    remove_tree(d, p)
