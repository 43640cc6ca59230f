"""A device's export directory: checked for every kind, created when missing for xen-9pfsd's kind.

xl's default export for `type=xen_9pfsd` without `path=` is a per-guest directory under Xen's log dir that
nobody creates beforehand; xen-9pfsd makes it (mkdir -p, mode 0777 before the umask), so xen9pd does too for
kind `xen_9pfs` — but only for an absolute, canonical path, and never through a symlink. QEMU (kind `9pfs`)
refuses a missing export, and so does xen9pd for that kind.
"""
from __future__ import annotations

import errno
import os
import stat

from xen9p_common.errors import Xen9pError

CREATING_KIND = "xen_9pfs"
MODE = 0o777  # xen-9pfsd's; the daemon's umask applies
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ExportError(Xen9pError):
    """The export cannot be used (or created); the message is the reason."""


def canonical_problem(path: str) -> str | None:
    """Why `path` is not an absolute canonical path (None if it is): no `//`, `.`, `..`, trailing `/`."""
    if not path.startswith("/"):
        return "is not absolute"
    if path == "/":
        return None
    if path.endswith("/"):
        return "ends with '/'"
    if "\0" in path:
        return "contains a NUL byte"
    for part in path[1:].split("/"):
        if part == "":
            return "contains '//'"
        if part in (".", ".."):
            return f"contains a {part!r} component"
    return None


def ensure_export(path: str, kind: str) -> bool:
    """Check the export of a device of `kind`; create it if missing and the kind says so.

    Returns True if this call created (part of) it. Raises ExportError with the reason otherwise.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        pass
    except OSError as e:  # ENOTDIR (a file on the way), EACCES, ELOOP ...
        raise ExportError(f"export {path} is not a directory on this host ({e.strerror})") from None
    else:
        if not stat.S_ISDIR(st.st_mode):
            raise ExportError(f"export {path} is not a directory on this host")
        return False
    if kind != CREATING_KIND:
        raise ExportError(f"export {path} does not exist on this host (kind {kind} needs an existing directory)")
    why = canonical_problem(path)
    if why is not None:
        raise ExportError(f"export {path} does not exist and is not created: the path {why}")
    try:
        _mkdirs_nofollow(path)
    except OSError as e:
        raise ExportError(f"export {path} does not exist and cannot be created: {e.strerror}"
                          + (f" ({e.filename})" if e.filename else "")) from None
    return True


def _mkdirs_nofollow(path: str) -> None:
    """mkdir -p from / one component at a time, each opened O_NOFOLLOW|O_DIRECTORY: a symlink stops it."""
    fd = os.open("/", _DIR_FLAGS)
    walked = ""
    try:
        for part in path[1:].split("/"):
            walked += "/" + part
            try:
                os.mkdir(part, MODE, dir_fd=fd)
            except FileExistsError:
                pass  # made by someone else, or a symlink: the open below tells
            except OSError as e:
                raise OSError(e.errno, e.strerror, walked) from None
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(e.errno, "a component is a symlink or not a directory", walked) from None
                raise OSError(e.errno, e.strerror, walked) from None
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
