"""What fuzzing found, pinned by name (the raw inputs are replayed from regressions/ too)."""
from __future__ import annotations

import errno
import os
import queue
import stat

import pytest

from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M
from xen9p_worker.backend.local import LocalBackend
from xen9p_worker.dispatch import Server

DEADLINE = 10.0


@pytest.fixture
def conn(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    server = Server(LocalBackend(str(export), "passthrough"), pool_size=2)
    s = server.session()
    tags = iter(range(1, 1000))

    def call(cls, *args):
        q: queue.Queue = queue.Queue()
        s.submit(M.encode(cls(next(tags), *args)), q.put)
        return M.decode(q.get(timeout=DEADLINE))

    assert isinstance(call(M.Tversion, 65536, "9P2000.L"), M.Rversion)
    assert isinstance(call(M.Tattach, 0, M.NOFID, "root", "", 0), M.Rattach)
    yield export, call
    s.close()
    server.close()


def _lcreate_existing(call, name: str):
    assert isinstance(call(M.Twalk, 0, 1, ()), M.Rwalk)
    return call(M.Tlcreate, 1, name, C.L_O_RDWR, 0o644, 0)


def test_lcreate_over_an_existing_fifo_does_not_open_it(conn):
    export, call = conn
    os.mkfifo(export / "fifo")
    r = _lcreate_existing(call, "fifo")  # opening the fifo on the host would block this call forever
    assert isinstance(r, M.Rlerror) and r.ecode == errno.ENXIO


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device node needs root")
def test_lcreate_over_a_guest_made_device_node_does_not_open_the_host_device(conn):
    export, call = conn
    r = call(M.Tmknod, 0, "null", stat.S_IFCHR | 0o666, 1, 3, 0)  # /dev/null's numbers
    assert isinstance(r, M.Rmknod)
    r = _lcreate_existing(call, "null")
    assert isinstance(r, M.Rlerror) and r.ecode == errno.ENXIO


def test_lcreate_of_an_existing_file_opens_it_without_changing_its_mode(conn):
    export, call = conn
    (export / "f").write_bytes(b"keep")
    os.chmod(export / "f", 0o600)
    r = _lcreate_existing(call, "f")
    assert isinstance(r, M.Rlcreate)
    r = call(M.Tread, 1, 0, 100)
    assert isinstance(r, M.Rread) and bytes(r.data) == b"keep"
    assert stat.S_IMODE(os.stat(export / "f").st_mode) == 0o600


def test_lcreate_with_o_excl_of_an_existing_file_is_eexist(conn):
    export, call = conn
    (export / "f").write_bytes(b"")
    assert isinstance(call(M.Twalk, 0, 1, ()), M.Rwalk)
    r = call(M.Tlcreate, 1, "f", C.L_O_RDWR | C.L_O_EXCL, 0o644, 0)
    assert isinstance(r, M.Rlerror) and r.ecode == errno.EEXIST


@pytest.mark.parametrize("major,minor", [(0x80000000, 0), (0, 0xFFFFFFFF)])
def test_mknod_device_numbers_above_int_are_einval(conn, major, minor):
    _, call = conn
    r = call(M.Tmknod, 0, "n", stat.S_IFCHR | 0o600, major, minor, 0)
    assert isinstance(r, M.Rlerror) and r.ecode == errno.EINVAL


@pytest.mark.parametrize("mode", [3816079870, stat.S_IFIFO | 0o600 | 0x10000])
def test_mknod_modes_with_bits_beyond_type_and_permissions_are_einval(conn, mode):
    export, call = conn
    r = call(M.Tmknod, 0, "n", mode, 0, 0, 0)
    assert isinstance(r, M.Rlerror) and r.ecode == errno.EINVAL  # not EIO with a traceback
    assert not (export / "n").exists()


def test_xattr_names_with_nul_are_einval(conn):
    export, call = conn
    (export / "f").write_bytes(b"")
    assert isinstance(call(M.Twalk, 0, 1, ("f",)), M.Rwalk)
    r = call(M.Txattrwalk, 1, 2, "user.a\x00b")
    assert isinstance(r, M.Rlerror) and r.ecode == errno.EINVAL
    r = call(M.Txattrcreate, 1, "user.a\x00b", 1, 0)
    assert isinstance(r, M.Rlerror) and r.ecode == errno.EINVAL


@pytest.mark.parametrize("op", ["read", "write"])
def test_offsets_above_the_hosts_signed_range_are_einval(conn, op):
    export, call = conn
    (export / "f").write_bytes(b"x")
    assert isinstance(call(M.Twalk, 0, 1, ("f",)), M.Rwalk)
    assert isinstance(call(M.Tlopen, 1, C.L_O_RDWR), M.Rlopen)
    r = call(M.Tread, 1, 1 << 63, 10) if op == "read" else call(M.Twrite, 1, (1 << 64) - 1, b"y")
    assert isinstance(r, M.Rlerror) and r.ecode == errno.EINVAL


@pytest.mark.parametrize("valid,size,atime,mtime", [
    (C.SETATTR_SIZE, 1 << 63, (0, 0), (0, 0)),
    (C.SETATTR_ATIME | C.SETATTR_ATIME_SET, 0, (1 << 63, 0), (0, 0)),
    (C.SETATTR_MTIME | C.SETATTR_MTIME_SET, 0, (0, 0), (5, 1_000_000_000)),
])
def test_setattr_values_the_host_cannot_hold_are_einval_and_change_nothing(conn, valid, size, atime, mtime):
    export, call = conn
    (export / "f").write_bytes(b"data")
    before = os.stat(export / "f")
    assert isinstance(call(M.Twalk, 0, 1, ("f",)), M.Rwalk)
    r = call(M.Tsetattr, 1, valid | C.SETATTR_MODE, 0o600, 0, 0, size, atime[0], atime[1], mtime[0], mtime[1])
    assert isinstance(r, M.Rlerror) and r.ecode == errno.EINVAL  # not EIO with a traceback
    after = os.stat(export / "f")
    assert (after.st_size, after.st_mode, after.st_mtime_ns) == (before.st_size, before.st_mode, before.st_mtime_ns)
