"""Post-mortem of a stuck 9pfs device: maps each ring's pages read-only from dom0 and prints the
indexes and the headers of every message still queued each way. Harness tooling, run by main.sh."""
import struct
import subprocess
import sys

from xen9p_common.platform.xen.gntdev import GntdevMapper

NAMES = {8: "statfs", 12: "lopen", 14: "lcreate", 16: "symlink", 18: "mknod", 20: "rename",
         22: "readlink", 24: "getattr", 26: "setattr", 30: "xattrwalk", 32: "xattrcreate",
         40: "readdir", 50: "fsync", 52: "lock", 54: "getlock", 70: "link", 72: "mkdir",
         74: "renameat", 76: "unlinkat", 100: "version", 104: "attach", 108: "flush", 110: "walk",
         116: "read", 118: "write", 120: "clunk", 122: "remove", 6: "lerror"}


def xs_read(path):
    r = subprocess.run(["xenstore-read", path], capture_output=True, text=True, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else None


def name(mtype):
    base = mtype - (mtype & 1 and mtype != 7)  # R = T + 1
    n = NAMES.get(base if mtype != 7 else 6, str(mtype))
    return ("R" if mtype & 1 else "T") + n


def walk(half, cons, prod, size, limit=12):
    """Headers between cons and prod: [(index, size, type, tag)], stopping at nonsense."""
    out = []
    i = cons
    while (prod - i) & 0xFFFFFFFF and len(out) < limit:
        pos = i & (size - 1)
        hdr = bytes(half[pos:pos + 7]) if pos + 7 <= size else bytes(half[pos:size]) + bytes(half[0:7 - (size - pos)])
        msize, mtype, tag = struct.unpack("<IBH", hdr)
        out.append((i, msize, name(mtype), tag))
        if msize < 7 or msize > size:
            break
        i = (i + msize) & 0xFFFFFFFF
    return out


def peek(domid, devid):
    fe = f"/local/domain/{domid}/device/9pfs/{devid}"
    nrings = int(xs_read(f"{fe}/num-rings") or 0)
    print(f"dom{domid}/dev{devid}: frontend state {xs_read(fe + '/state')}, {nrings} ring(s)")
    gm = GntdevMapper()
    for r in range(nrings):
        ref = int(xs_read(f"{fe}/ring-ref{r}") or 0)
        intf = gm.map(domid, [ref], writable=False)
        in_cons, in_prod = struct.unpack_from("<II", intf.buf, 0)
        out_cons, out_prod = struct.unpack_from("<II", intf.buf, 64)
        order = struct.unpack_from("<I", intf.buf, 128)[0]
        refs = struct.unpack_from(f"<{1 << order}I", intf.buf, 132)
        print(f"  ring{r} ref {ref} order {order}: in_cons {in_cons:#x} in_prod {in_prod:#x} "
              f"(replies queued {(in_prod - in_cons) & 0xFFFFFFFF}); out_cons {out_cons:#x} out_prod {out_prod:#x} "
              f"(requests queued {(out_prod - out_cons) & 0xFFFFFFFF})")
        data = gm.map(domid, list(refs), writable=False)
        size = 1 << (order + 11)
        for label, half, c, p in (("in (replies)", data.buf[:size], in_cons, in_prod),
                                  ("out (requests)", data.buf[size:2 * size], out_cons, out_prod)):
            for i, n, t, tag in walk(half, c, p, size):
                print(f"    {label} @{i:#x}: size {n} {t} tag {tag}")
    return 0


def main(argv):
    rc = 0
    for spec in argv:
        domid, devid = (int(x) for x in spec.split("/"))
        try:
            peek(domid, devid)
        except Exception as e:  # a post-mortem must print what it can
            print(f"dom{domid}/dev{devid}: peek failed: {e!r}")
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
