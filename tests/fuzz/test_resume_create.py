"""Found by the kill storm: a worker killed between creating a file and recording the fid change.

Its successor re-runs the Tlcreate (the journal says STARTED); with O_EXCL that answered EEXIST to
the guest for a create that had in fact been applied once. The re-run now opens the file instead.
"""
from __future__ import annotations

import queue

from xen9p_common.p9 import constants as C
from xen9p_common.p9 import messages as M
from xen9p_worker.backend.local import LocalBackend
from xen9p_worker.dispatch import Server
from xen9p_worker.ring_resume import ResumeFixup


def _session(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    server = Server(LocalBackend(str(export), "passthrough"), pool_size=1)
    s = server.session()

    def call(msg):
        q: queue.Queue = queue.Queue()
        s.submit(msg if isinstance(msg, bytes) else M.encode(msg), q.put)
        return M.decode(q.get(timeout=10))

    call(M.Tversion(M.NOTAG, 65536, "9P2000.L"))
    call(M.Tattach(1, 0, M.NOFID, "root", "", 0))
    call(M.Twalk(2, 0, 1, ()))
    return export, s, server, call


def test_rerun_of_an_exclusive_create_whose_file_exists_opens_it(tmp_path):
    export, s, server, call = _session(tmp_path)
    try:
        (export / "new").write_bytes(b"")  # the predecessor's create reached the host, then it died
        req = M.Tlcreate(3, 1, "new", C.L_O_RDWR | C.L_O_CREAT | C.L_O_EXCL, 0o644, 0)
        frame = ResumeFixup(s).prepare(M.encode(req))
        rerun = M.decode(frame)
        assert isinstance(rerun, M.Tlcreate) and not rerun.flags & C.L_O_EXCL
        assert isinstance(call(frame), M.Rlcreate)
    finally:
        s.close()
        server.close()


def test_rerun_of_an_exclusive_create_whose_file_is_absent_stays_exclusive(tmp_path):
    export, s, server, call = _session(tmp_path)
    try:
        req = M.encode(M.Tlcreate(3, 1, "new", C.L_O_RDWR | C.L_O_CREAT | C.L_O_EXCL, 0o644, 0))
        assert ResumeFixup(s).prepare(req) == req
        (export / "dir").mkdir()  # not a file: the re-run must still fail as a create over it would
        req = M.encode(M.Tlcreate(4, 1, "dir", C.L_O_RDWR | C.L_O_CREAT | C.L_O_EXCL, 0o644, 0))
        assert ResumeFixup(s).prepare(req) == req
    finally:
        s.close()
        server.close()
