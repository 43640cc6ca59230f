"""Measure ring workers on the simulated platform: Tgetattr/s and worker CPU per op, Tread GB/s, 2 rings vs 1, RSS.

Usage: python bench/ring_probe.py [--seconds 3] [--inflight 16] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
import uuid

import psutil
import zmq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from xen9p_common import control  # noqa: E402
from xen9p_common.p9 import messages as M  # noqa: E402
from xen9p_common.platform.sim.evtchn import SimEventChannels  # noqa: E402
from xen9p_common.platform.sim.grants import SimDomainMemory  # noqa: E402
from xen9p_common.ring import FrontendRing, Intf, ring_size  # noqa: E402
from xen9p_worker.shared.device_state import DeviceState  # noqa: E402
from bench.channels import ReplyReader  # noqa: E402

GUEST = 9
_TAG = struct.Struct("<H")
_SIZE = struct.Struct("<I")


class Bench:
    """One device: a guest with `rings` rings of `order`, one worker process per ring."""

    def __init__(self, tmp: str, rings: int, order: int = 9, threads: int = 8) -> None:
        # Guest memory on tmpfs, like RAM: on a disk filesystem every reply would be written back.
        self._simtmp = tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.sim = self._simtmp.name
        self.export = os.path.join(tmp, "export")
        os.makedirs(self.sim, exist_ok=True)
        os.makedirs(self.export, exist_ok=True)
        self.name = f"xen9p-bench-{uuid.uuid4().hex[:10]}"
        self.ds = DeviceState.create(self.name, max_fids=1024, max_open_files=0, max_space_mb=0,
                                     export=self.export, security_model="none", msize_cap=512 * 1024 + 24,
                                     num_rings=rings)
        self.mem = SimDomainMemory(self.sim, GUEST, rings * (1 + (1 << order)) + 4)
        self.evt = SimEventChannels(self.sim, GUEST)
        self.size = ring_size(order)
        self.rings = []
        for _ in range(rings):
            frames = self.mem.alloc_pages(1 + (1 << order))
            ref = self.mem.grant_access(frames[0], 0)
            refs = [self.mem.grant_access(f, 0) for f in frames[1:]]
            intf = self.mem.pages_view(frames[0], 1)
            Intf(intf).setup(order, refs)
            data = self.mem.pages_view(frames[1], 1 << order)
            # Requests through FrontendRing; replies through the bench's ReplyReader (an Rread
            # as its header only), so the probe's guest is not what bounds the figure.
            fr = FrontendRing(intf, data, order)
            self.rings.append((ref, self.evt.alloc_unbound(0), fr, ReplyReader(intf, data, order)))
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.endpoint = f"ipc://{tmp}/sup.sock"
        self.router.bind(self.endpoint)
        self.procs = []
        for k, (ref, port, _, _) in enumerate(self.rings):
            argv = [sys.executable, "-m", "xen9p_worker", "ring", "--platform", "sim", "--sim-dir", self.sim,
                    "--domid", str(GUEST), "--devid", "0", "--ring", str(k), "--ring-ref", str(ref),
                    "--evtchn", str(port), "--state", self.name, "--export", self.export,
                    "--security-model", "none", "--supervisor", self.endpoint, "--threads", str(threads)]
            self.procs.append(subprocess.Popen(argv, env=dict(os.environ, PYTHONPATH=REPO)))
        ready = 0
        deadline = time.monotonic() + 20
        while ready < rings:
            if not self.router.poll(int(max(0, deadline - time.monotonic()) * 1000)):
                raise RuntimeError("workers did not become ready")
            _, raw = self.router.recv_multipart()
            ready += control.parse_worker_msg(raw)["type"] == "ready"

    def rpc(self, msg: M.Message) -> M.Message:
        ring = msg.tag % len(self.rings)
        _, port, fr, rr = self.rings[ring]
        assert fr.write_request(M.encode(msg))
        self.evt.notify(port)
        while True:
            reps = rr.take()
            if reps:
                return M.decode(reps[0])
            select.select([self.evt.fileno()], [], [], 0.05)
            for p in self.evt.pending():
                self.evt.unmask(p)

    def setup_session(self) -> None:
        self.rpc(M.Tversion(M.NOTAG, 512 * 1024 + 24, "9P2000.L"))
        self.rpc(M.Tattach(0, 0, M.NOFID, "root", "", 0))
        with open(os.path.join(self.export, "big"), "wb") as f:
            f.write(os.urandom(8 << 20))
        for k in range(len(self.rings)):
            self.rpc(M.Twalk(k, 0, 10 + k, ["big"]))
            self.rpc(M.Tlopen(k, 10 + k, 0))

    def drive(self, frames_for_ring, seconds: float, inflight: int) -> tuple[int, int, float]:
        """Keep `inflight` requests outstanding on every ring; returns (replies, reply bytes, seconds)."""
        outstanding = [0] * len(self.rings)
        nxt = [0] * len(self.rings)
        done = nbytes = 0
        fds = [self.evt.fileno()]
        t0 = time.perf_counter()
        end = t0 + seconds
        while True:
            now = time.perf_counter()
            stopping = now >= end
            progress = False
            for k, (_, port, fr, rr) in enumerate(self.rings):
                sent = False
                frames = frames_for_ring[k]
                while not stopping and outstanding[k] < inflight:
                    if not fr.write_request(frames[nxt[k] % len(frames)]):
                        break
                    nxt[k] += 1
                    outstanding[k] += 1
                    sent = True
                reps = rr.take()
                got = bool(reps)
                for rep in reps:
                    outstanding[k] -= 1
                    done += 1
                    nbytes += _SIZE.unpack_from(rep, 0)[0]
                if sent or got:
                    self.evt.notify(port)  # one notify per batch, like a busy Linux frontend
                    progress = progress or got
            if stopping and not any(outstanding):
                break
            if progress:
                continue  # replies freed room: refill before sleeping
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a worker exited: {[p.returncode for p in self.procs]}")
            select.select(fds, [], [], 0.01)
            for p in self.evt.pending():
                self.evt.unmask(p)
        return done, nbytes, time.perf_counter() - t0

    def cpu(self) -> float:
        return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in self.procs)

    def rss(self) -> int:
        return max(psutil.Process(p.pid).memory_info().rss for p in self.procs)

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(timeout=15)
        self.router.close(0)
        self.ctx.term()
        self.evt.close()
        self.mem.destroy()
        self.ds.close()
        self.ds.unlink()
        self._simtmp.cleanup()


def getattr_frames(b: Bench, ring: int, inflight: int) -> list[bytes]:
    n = len(b.rings)
    # tags t with t % n == ring, distinct among the in-flight window
    return [M.encode(M.Tgetattr(ring + n * (i + 1), 0, 0x7FF)) for i in range(inflight * 2)]


def read_frames(b: Bench, ring: int, inflight: int, count: int) -> list[bytes]:
    n = len(b.rings)
    size = 8 << 20
    return [M.encode(M.Tread(ring + n * (i + 1), 10 + ring, (i * count) % size, count))
            for i in range(inflight * 2)]


def probe(seconds: float, inflight: int) -> dict:
    out: dict = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for rings in (1, 2):
            b = Bench(os.path.join(tmp, f"r{rings}"), rings)
            try:
                b.setup_session()
                frames = [getattr_frames(b, k, inflight) for k in range(rings)]
                b.drive(frames, 0.3, inflight)  # warm up
                c0 = b.cpu()
                n, _, dt = b.drive(frames, seconds, inflight)
                c1 = b.cpu()
                out[f"getattr_per_s_{rings}ring"] = round(n / dt)
                out[f"getattr_cpu_us_per_op_{rings}ring"] = round((c1 - c0) / n * 1e6, 1)
                # 512 KiB Tread from the page cache, zero-copy into the ring (2 in flight fill a 1 MiB half).
                rframes = [read_frames(b, k, 2, 512 * 1024) for k in range(rings)]
                b.drive(rframes, 0.3, 2)
                c0 = b.cpu()
                n, nbytes, dt = b.drive(rframes, seconds, 2)
                c1 = b.cpu()
                out[f"tread_512k_GBps_{rings}ring"] = round(nbytes / dt / 1e9, 3)
                out[f"tread_cpu_us_per_op_{rings}ring"] = round((c1 - c0) / n * 1e6, 1)
                out[f"worker_rss_MB_{rings}ring"] = round(b.rss() / 1e6, 1)
            finally:
                b.close()
    out["getattr_scaling_2v1"] = round(out["getattr_per_s_2ring"] / out["getattr_per_s_1ring"], 2)
    out["tread_scaling_2v1"] = round(out["tread_512k_GBps_2ring"] / out["tread_512k_GBps_1ring"], 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--inflight", type=int, default=16)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    res = probe(args.seconds, args.inflight)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:32} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
