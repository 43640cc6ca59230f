"""The load generator: one process per ring (or per socket connection), each keeping D requests in flight.

The parent (LoadPool) sends commands over pipes so all processes set up, start and stop together.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from array import array
from dataclasses import dataclass, field
from random import randrange

from xen9p_common.p9 import messages as m

from .ops import OPS, ROOT_FID, OpError, check, with_tag

BROKEN = "channel broken"  # prefix of errors after which a load process can do nothing more
MAX_SAMPLES = 20000  # latency samples kept per process (a uniform subsample beyond that)


@dataclass
class ChannelSpec:
    """How a child process reaches the server: ("socket", path) or ("ring", sim args)."""

    kind: str
    args: dict = field(default_factory=dict)


def _open_channel(spec: ChannelSpec):
    from .channels import RingChannel, SocketChannel
    if spec.kind == "socket":
        return SocketChannel(spec.args["path"])
    from xen9p_common.platform.sim.evtchn import SimEventChannels
    a = spec.args
    ev = SimEventChannels(a["sim_dir"], a["domid"])
    ch = RingChannel(a["sim_dir"], a["domid"], a["intf_frame"], a["data_frame"], a["order"], ev)
    ch.port = ev.alloc_unbound(a["backend_domid"])
    return ch


def _rpc(ch, frame, want, tag: int, strict: bool = True):
    """One request, one reply (nothing else is in flight on the channel)."""
    ch.send(with_tag(frame, tag))
    for r in ch.recv():
        if strict:
            check(r, want)
        return r
    raise OpError("no reply")


class _Child:
    def __init__(self, conn, spec: ChannelSpec, index: int, tag_stride: int) -> None:
        self.conn = conn
        self.ch = _open_channel(spec)
        self.index = index
        self.stride = tag_stride
        self.ops = []
        self.broken = ""

    def tag(self, slot: int) -> int:
        # Tags chosen so tag % num_rings is this process's ring, as Linux maps tags to rings.
        return slot * self.stride + self.index

    def handle(self, cmd: str, arg):
        if cmd == "port":
            return getattr(self.ch, "port", 0)
        if cmd == "version":
            r = _rpc(self.ch, m.encode(m.Tversion(m.NOTAG, arg, "9P2000.L")), m.Rversion, m.NOTAG)
            return m.decode(bytes(r)).msize
        if cmd == "attach":
            aname, uname = arg
            _rpc(self.ch, m.encode(m.Tattach(0, ROOT_FID, m.NOFID, uname, aname, 0)), m.Rattach, self.tag(0))
            return True
        if cmd == "prepare":
            opname, depth, params = arg
            cls = OPS[opname]
            # Slot ids unique across processes: file names made from them must not collide.
            self.ops = [cls(self.index * 1000 + s, 100 + self.index * 100000 + s * 10, params)
                        for s in range(depth)]
            for s, op in enumerate(self.ops):
                for frame, want in op.setup():
                    _rpc(self.ch, frame, want, self.tag(s))
            return True
        if cmd == "go":
            return self.run(*arg)
        if cmd == "finish":
            for s, op in enumerate(self.ops):
                for frame, want in op.teardown():
                    _rpc(self.ch, frame, want, self.tag(s), strict=False)  # best effort
            self.ops = []
            return True
        raise ValueError(cmd)

    def run(self, duration: float, max_iters: int) -> dict:
        ch, ops = self.ch, self.ops
        tags = {self.tag(s): op for s, op in enumerate(ops)}
        started: dict[int, float] = {}
        lat = array("d")
        seen = 0
        iters = 0
        sent = 0
        clock = time.perf_counter
        cpu0 = time.process_time()
        t0 = clock()
        stop_at = t0 + duration
        stopping = False
        error = None
        for tag, op in tags.items():
            started[tag] = clock()
            ch.send(op.start(tag))
            sent += 1
        inflight = len(tags)
        while inflight:
            for reply in ch.recv():
                tag = int.from_bytes(reply[5:7], "little")
                op = tags[tag]
                try:
                    nxt = op.on_reply(tag, reply)
                except OpError as e:
                    # Stop starting iterations, drain what is in flight, report the figure void.
                    error = error or str(e)
                    stopping = True
                    inflight -= 1
                    continue
                if nxt is not None:
                    ch.send(nxt)
                    sent += 1
                    continue
                now = clock()
                iters += 1
                seen += 1
                d = now - started[tag]
                if len(lat) < MAX_SAMPLES:
                    lat.append(d)
                else:  # reservoir sampling: every iteration equally likely to be kept
                    j = randrange(seen)
                    if j < MAX_SAMPLES:
                        lat[j] = d
                if stopping or now >= stop_at or iters >= max_iters:
                    stopping = True
                    inflight -= 1
                    continue
                started[tag] = now
                ch.send(op.start(tag))
                sent += 1
            ch.flush()
        wall = clock() - t0
        units = sum(op.done_units for op in ops)
        for op in ops:
            op.done_units = 0
        return {"units": units, "iters": iters, "requests": sent, "wall": wall,
                "cpu": time.process_time() - cpu0, "lat": lat.tobytes(), "error": error}

    def loop(self) -> None:
        while True:
            cmd, arg = self.conn.recv()
            if cmd == "exit":
                break
            if self.broken and cmd != "exit":
                self.conn.send(("error", self.broken))
                continue
            try:
                self.conn.send(("ok", self.handle(cmd, arg)))
            except OpError as e:
                self.conn.send(("error", f"{type(e).__name__}: {e}"))
            except Exception as e:  # noqa: BLE001 - the channel is unusable from here on
                self.broken = f"{BROKEN}: {type(e).__name__}: {e}"
                self.conn.send(("error", self.broken))
        self.ch.close()


def _child_main(conn, spec: ChannelSpec, index: int, tag_stride: int, cpu: int | None) -> None:
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    try:
        child = _Child(conn, spec, index, tag_stride)
    except Exception as e:  # noqa: BLE001
        conn.send(("error", f"cannot open channel: {type(e).__name__}: {e}"))
        return
    conn.send(("ok", "ready"))
    child.loop()


class LoadError(Exception):
    """A load process failed; the figure it was measuring is void."""


class LoadPool:
    """N load processes, one per channel; commands go to all (or one) and results come back."""

    def __init__(self, specs: list[ChannelSpec], tag_stride: int, timeout: float = 120.0) -> None:
        ctx = mp.get_context("spawn")  # no fork: the parent may hold zmq or threads
        self.timeout = timeout
        self.server_dead = None  # callable -> reason string when the server under test has died
        self.procs = []
        self.conns = []
        for i, spec in enumerate(specs):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_child_main, args=(b, spec, i, tag_stride, None), daemon=True,
                            name=f"bench-load-{i}")
            p.start()
            self.procs.append(p)
            self.conns.append(a)
        for i in range(len(specs)):
            self._recv(i)

    def _recv(self, i: int):
        end = time.monotonic() + self.timeout
        while not self.conns[i].poll(0.2):
            # A dead server leaves the load process waiting forever: stop at once, saying why.
            why = self.server_dead() if self.server_dead else None
            if why:
                raise LoadError(f"{BROKEN}: {why}")
            if time.monotonic() > end:
                raise LoadError(f"load process {i} did not answer within {self.timeout} s")
        status, val = self.conns[i].recv()
        if status != "ok":
            raise LoadError(f"load process {i}: {val}")
        return val

    def call(self, i: int, cmd: str, arg=None):
        self.conns[i].send((cmd, arg))
        return self._recv(i)

    def call_all(self, cmd: str, arg=None) -> list:
        for c in self.conns:
            c.send((cmd, arg))
        # Collect every answer before raising, so no stale answer is left in a pipe.
        out, err = [], None
        for i in range(len(self.conns)):
            try:
                out.append(self._recv(i))
            except LoadError as e:
                err = err or e
        if err is not None:
            raise err
        return out

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(("exit", None))
            except OSError:
                pass
        deadline = time.monotonic() + 5
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1)
