"""Simulated grant tables: a guest grants pages, a backend in another process maps them.

Includes the issue-3 proof: a whole order-9 ring (intf page + 512 data pages) mapped cross-process.
"""
from __future__ import annotations

import errno
import hashlib
import os
import select
import struct
import subprocess
import sys
import time

import pytest

from xen9p_common.errors import PlatformError
from xen9p_common.platform.sim import make_platform, sim_paths
from xen9p_common.platform.sim.grants import (GTF_permit_access, GTF_readonly, PAGE_SIZE,
                                              SimDomainMemory, SimGrantMapper)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST = 5
DEADLINE = 30.0

# The backend side of the proof, run as a separate interpreter: maps the intf page, reads
# ring_order and the data refs from it (as a real backend must), maps the data area.
BACKEND = r"""
import hashlib, struct, sys
from xen9p_common.platform.sim.grants import SimGrantMapper
sim_dir, domid, intf_ref = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mapper = SimGrantMapper(sim_dir, 0)
intf = mapper.map(domid, [intf_ref])
order = struct.unpack_from("<I", intf.buf, 128)[0]
refs = list(struct.unpack_from(f"<{1 << order}I", intf.buf, 132))
data = mapper.map(domid, refs)
half = len(data.buf) // 2
digest = hashlib.sha256(data.buf[half:]).hexdigest()       # the out half: requests
data.buf[:half] = bytes((i * 7) & 0xFF for i in range(256)) * (half // 256)
struct.pack_into("<I", intf.buf, 4, 0xC0FFEE)               # in_prod
print("mapped", order, len(data.buf), digest, flush=True)
sys.stdin.readline()
data.unmap(); intf.unmap()
print("unmapped", flush=True)
"""

HOLDER = r"""
import sys
from xen9p_common.platform.sim.grants import SimGrantMapper
m = SimGrantMapper(sys.argv[1], 0).map(int(sys.argv[2]), [int(r) for r in sys.argv[3:]])
print("mapped", flush=True)
sys.stdin.readline()
"""


def spawn(code: str, *args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def read_words(proc: subprocess.Popen, timeout: float = DEADLINE) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            pytest.fail("child process did not answer in time")
        if select.select([proc.stdout], [], [], left)[0]:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"child process exited with {proc.wait()}")
            return line.split()


@pytest.fixture
def guest(tmp_path):
    mem = SimDomainMemory(str(tmp_path), GUEST, pages=1024)
    yield mem
    mem.destroy()


def errno_of(excinfo) -> int:
    return excinfo.value.errno


def test_order9_ring_mapped_from_another_process(tmp_path, guest):
    intf_frame, = guest.alloc_pages(1)
    frames = guest.alloc_pages(512)
    frames.reverse()  # not contiguous in guest memory: the mapping must still be
    intf = guest.page(intf_frame)
    intf[:] = bytes(PAGE_SIZE)
    refs = [guest.grant_access(f, 0) for f in frames]
    struct.pack_into("<I", intf, 128, 9)
    struct.pack_into("<512I", intf, 132, *refs)
    for i, f in enumerate(frames):
        guest.page(f)[:] = bytes([i & 0xFF, i >> 8]) * (PAGE_SIZE // 2)
    out_half = b"".join(bytes(guest.page(f)) for f in frames[256:])
    intf_ref = guest.grant_access(intf_frame, 0)

    proc = spawn(BACKEND, tmp_path, GUEST, intf_ref)
    try:
        word, order, size, digest = read_words(proc)
        assert (word, int(order), int(size)) == ("mapped", 9, 512 * PAGE_SIZE)
        assert digest == hashlib.sha256(out_half).hexdigest()
        # The backend's writes land in the guest's pages, in ref order.
        pattern = bytes((i * 7) & 0xFF for i in range(256)) * (PAGE_SIZE // 256)
        assert all(bytes(guest.page(f)) == pattern for f in frames[:256])
        assert struct.unpack_from("<I", intf, 4)[0] == 0xC0FFEE
        with pytest.raises(PlatformError) as busy:
            guest.end_access(refs[0])  # still mapped by the other process
        assert errno_of(busy) == errno.EBUSY
        proc.stdin.write("done\n")
        proc.stdin.flush()
        assert read_words(proc) == ["unmapped"]
    finally:
        proc.stdin.close()
        proc.wait(DEADLINE)
    assert proc.returncode == 0
    for ref in refs + [intf_ref]:
        guest.end_access(ref)
    assert guest.entry(refs[0]) == (0, 0, 0)


def test_writes_are_shared_both_ways_between_two_mappings(tmp_path, guest):
    frames = guest.alloc_pages(3)
    refs = [guest.grant_access(f, 0) for f in frames]
    mapper = SimGrantMapper(str(tmp_path), 0)
    a, b = mapper.map(GUEST, refs), mapper.map(GUEST, refs[1:])
    a.buf[PAGE_SIZE:PAGE_SIZE + 5] = b"hello"
    assert bytes(b.buf[:5]) == b"hello"
    assert bytes(guest.page(frames[1])[:5]) == b"hello"
    guest.page(frames[2])[10:13] = b"xyz"
    assert bytes(a.buf[2 * PAGE_SIZE + 10:2 * PAGE_SIZE + 13]) == b"xyz"
    a.unmap()
    b.unmap()


def test_grant_entry_is_grant_entry_v1(guest):
    frame, = guest.alloc_pages(1)
    ref = guest.grant_access(frame, 0)
    ro = guest.grant_access(frame, 7, readonly=True)
    assert ref >= 8  # reserved entries are never handed out
    assert guest.entry(ref) == (GTF_permit_access, 0, frame)
    assert guest.entry(ro) == (GTF_permit_access | GTF_readonly, 7, frame)
    raw = open(os.path.join(sim_paths(guest.sim_dir)["mem"], f"dom{GUEST}.gnttab"), "rb").read()
    assert struct.unpack_from("<HHI", raw, ref * 8) == (GTF_permit_access, 0, frame)


def test_refs_not_granted_to_the_mapper_are_refused(tmp_path, guest):
    frame, = guest.alloc_pages(1)
    foreign = guest.grant_access(frame, 7)  # granted to dom7, not dom0
    mine = guest.grant_access(frame, 0)
    mapper = SimGrantMapper(str(tmp_path), 0)
    with pytest.raises(PlatformError) as e:
        mapper.map(GUEST, [mine, foreign])
    assert errno_of(e) == errno.EPERM
    with pytest.raises(PlatformError) as e:
        mapper.map(GUEST, [mine + 1])  # never granted
    assert errno_of(e) == errno.EINVAL
    # dom7 itself may map it
    m7 = SimGrantMapper(str(tmp_path), 7).map(GUEST, [foreign])
    assert len(m7.buf) == PAGE_SIZE
    m7.unmap()
    # the failed map left no lock behind on the good ref
    guest.end_access(mine)


@pytest.mark.parametrize("ref", [0, 7, 8192, 1 << 31])
def test_out_of_range_and_reserved_refs_are_refused(tmp_path, guest, ref):
    with pytest.raises(PlatformError) as e:
        SimGrantMapper(str(tmp_path), 0).map(GUEST, [ref])
    assert errno_of(e) == errno.EINVAL


def test_unknown_domain_and_empty_ref_list(tmp_path, guest):
    mapper = SimGrantMapper(str(tmp_path), 0)
    with pytest.raises(PlatformError) as e:
        mapper.map(99, [8])
    assert errno_of(e) == errno.ESRCH
    with pytest.raises(PlatformError) as e:
        mapper.map(GUEST, [])
    assert errno_of(e) == errno.EINVAL


def test_readonly_grant(tmp_path, guest):
    frame, = guest.alloc_pages(1)
    guest.page(frame)[:4] = b"ro!!"
    ref = guest.grant_access(frame, 0, readonly=True)
    mapper = SimGrantMapper(str(tmp_path), 0)
    with pytest.raises(PlatformError) as e:
        mapper.map(GUEST, [ref], writable=True)
    assert errno_of(e) == errno.EPERM
    m = mapper.map(GUEST, [ref], writable=False)
    assert m.buf.readonly and bytes(m.buf[:4]) == b"ro!!"
    with pytest.raises(TypeError):
        m.buf[0] = 0
    m.unmap()


def test_end_access_revokes_and_waits_for_unmap(tmp_path, guest):
    frame, = guest.alloc_pages(1)
    ref = guest.grant_access(frame, 0)
    mapper = SimGrantMapper(str(tmp_path), 0)
    m = mapper.map(GUEST, [ref])
    with pytest.raises(PlatformError) as e:
        guest.end_access(ref)
    assert errno_of(e) == errno.EBUSY
    m.unmap()
    m.unmap()  # idempotent
    guest.end_access(ref)
    with pytest.raises(PlatformError) as e:
        mapper.map(GUEST, [ref])
    assert errno_of(e) == errno.EINVAL


def test_a_crashed_mapper_releases_its_grants(tmp_path, guest):
    frame, = guest.alloc_pages(1)
    ref = guest.grant_access(frame, 0)
    proc = spawn(HOLDER, tmp_path, GUEST, ref)
    try:
        assert read_words(proc) == ["mapped"]
        with pytest.raises(PlatformError):
            guest.end_access(ref)
    finally:
        proc.kill()
        proc.wait(DEADLINE)
    guest.end_access(ref)  # the kernel dropped the dead process's locks
    assert guest.entry(ref)[0] == 0


def test_unmap_refuses_while_views_are_held(tmp_path, guest):
    frame, = guest.alloc_pages(1)
    ref = guest.grant_access(frame, 0)
    m = SimGrantMapper(str(tmp_path), 0).map(GUEST, [ref])
    head = m.buf[:16]
    with pytest.raises(PlatformError) as e:
        m.unmap()  # unmapping now would turn `head` into a dangling pointer
    assert errno_of(e) == errno.EBUSY
    assert bytes(head) == bytes(16)
    head.release()
    m.unmap()
    guest.end_access(ref)


def test_make_platform_grants_factory(tmp_path, guest):
    platform = make_platform(str(tmp_path))
    assert platform.name == "sim" and platform.self_domid == 0
    frame, = guest.alloc_pages(1)
    ref = guest.grant_access(frame, 0)
    mapper = platform.grants()
    m = mapper.map(GUEST, [ref])
    m.buf[:2] = b"ok"
    assert bytes(guest.page(frame)[:2]) == b"ok"
    m.unmap()
    mapper.close()
    assert set(sim_paths(str(tmp_path))) == {"xenstored", "mem", "evtchn"}


def test_platform_factories_reach_the_simulated_xenstored(tmp_path):
    from xen9p_sim.xenstore.xenstored import XenstoredServer
    from xen9p_common.platform.xen import read_self_domid
    path = sim_paths(str(tmp_path))["xenstored"]
    if len(path) >= 100:
        pytest.skip("tmp path too long for a Unix socket")
    server = XenstoredServer(path).start()
    try:
        platform = make_platform(str(tmp_path))
        xs = platform.xenstore()
        assert xs.read("/local/domain/0/domid") == "0"
        xs.close()
        # the xen platform's domid probe, pointed at the same store, reads the relative node
        assert read_self_domid(platform.xenstore) == 0
    finally:
        server.stop()


def test_alloc_hands_out_runs_and_pages_view_spans_them(guest):
    frames = guest.alloc_pages(4)
    assert frames == list(range(frames[0], frames[0] + 4))
    run = guest.pages_view(frames[0], 4)
    run[PAGE_SIZE * 3:PAGE_SIZE * 3 + 2] = b"hi"
    assert bytes(guest.page(frames[3])[:2]) == b"hi"
    with pytest.raises(PlatformError):
        guest.pages_view(guest.pages - 1, 2)
    run.release()
    guest.free_pages(sorted(frames, reverse=True))
    assert guest.alloc_pages(4) == frames
