"""Small helpers shared by the acceptance tests (flags, modes, error assertions)."""
from __future__ import annotations

import contextlib
import errno
import stat

import pytest

from xen9p_sim.client import P9Error
from xen9p_common.p9 import constants as c

RDWR_CREATE = c.L_O_RDWR | c.L_O_CREAT
DIR_OPEN = c.L_O_RDONLY | c.L_O_DIRECTORY


@contextlib.contextmanager
def raises_errno(*errnos: int):
    """The block must raise P9Error with one of `errnos` (any errno if none given)."""
    with pytest.raises(P9Error) as ei:
        yield ei
    if errnos:
        assert ei.value.errno in errnos, (
            f"expected {[errno.errorcode[e] for e in errnos]}, got {errno.errorcode.get(ei.value.errno, ei.value.errno)}")


def is_dir(mode: int) -> bool:
    return stat.S_ISDIR(mode)


def names_of(fid) -> set[str]:
    return set(fid.listdir())


def ident(qid) -> tuple[int, int]:
    """A qid's identity: type and path (version follows mtime, which other tests change)."""
    return (qid.type, qid.path)
