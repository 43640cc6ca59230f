"""A private, size-capped tmpfs for the fuzz sandbox: the dispatch target's filesystem work in memory.

On a disk filesystem a dispatch session pays for real syncs (Tfsync -> fdatasync), rmdir and symlink
journaling; on tmpfs those are memory operations. The mount lives in a mount namespace of the fuzzing
process only (unshare(CLONE_NEWNS), done before any thread starts), so it never shows on the host and
vanishes with the process; its size cap bounds what a session can write (never the host's /dev/shm).
Needs root; without it (or where unshare is refused) the sandbox stays in the default temp directory.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile

CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
SIZE = "64m"
SANDBOX_PARENT_ENV = "XEN9P_FUZZ_SANDBOX_PARENT"  # where the dispatch target makes its sandbox

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def private_tmpfs(size: str = SIZE) -> tuple[str | None, str]:
    """Mount a tmpfs of `size` in a new mount namespace of this process: (its path, why) or (None, why not)."""
    if os.geteuid() != 0:
        return None, "not root: sandbox on the default temp directory"
    if _libc.unshare(CLONE_NEWNS) != 0:
        return None, f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}"
    # Our mounts must not propagate back to the host's namespace.
    if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return None, f"making / private: {os.strerror(ctypes.get_errno())}"
    path = tempfile.mkdtemp(prefix="xen9p-fuzz-tmpfs-")
    if _libc.mount(b"tmpfs", path.encode(), b"tmpfs", 0, f"size={size},mode=0700".encode()) != 0:
        err = os.strerror(ctypes.get_errno())
        os.rmdir(path)
        return None, f"mounting a tmpfs: {err}"
    return path, f"sandbox on a private {size} tmpfs"
