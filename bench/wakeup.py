"""What one request costs before any 9P work: an empty Python event loop's CPU per round trip.

`python -m bench.wakeup` runs the smallest server shaped like a ring worker at one request in flight
(poll(2) on a doorbell, read the doorbell, ring the peer's) against a client that rings and waits,
over an AF_UNIX datagram pair, first with both on one core, then on two cores. The server's user and
system CPU per round trip (getrusage) is the floor under every per-op figure of `python -m bench.cost`
at 1x1: on a VM a wakeup across cores costs the woken process far more than the switch on one core.
"""
from __future__ import annotations

import argparse
import os
import resource
import select
import socket
import sys
import time


def _server(sock: socket.socket, n: int, cpu: int | None, out: int) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN)
    os.write(out, b"r")  # ready: pinned and polling
    for _ in range(n):
        p.poll(10_000)
        sock.recv(16)
        sock.send(b"\x01")
    ru = resource.getrusage(resource.RUSAGE_SELF)
    os.write(out, f"{ru.ru_utime} {ru.ru_stime}".encode())


def round_trips(n: int, client_cpu: int | None, server_cpu: int | None) -> dict:
    """Server user/sys µs per round trip, the round trip in µs (client's wall clock), after n trips."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            a.close()
            os.close(r)
            _server(b, n, server_cpu, w)
        finally:
            os._exit(0)
    b.close()
    os.close(w)
    old = os.sched_getaffinity(0)
    try:
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        if os.read(r, 1) != b"r":
            raise RuntimeError("the server process did not start")
        t0 = time.perf_counter()
        for _ in range(n):
            a.send(b"\x01")
            a.recv(16)
        wall = time.perf_counter() - t0
        user, sys_ = (float(x) for x in os.read(r, 128).split())
    finally:
        os.sched_setaffinity(0, old)
        os.waitpid(pid, 0)
        os.close(r)
        a.close()
    return {"user_us": user / n * 1e6, "sys_us": sys_ / n * 1e6, "rtt_us": wall / n * 1e6}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.wakeup", description=__doc__.splitlines()[0])
    ap.add_argument("--trips", type=int, default=100_000, help="round trips per placement")
    args = ap.parse_args(argv)
    if args.trips < 1:
        ap.error("--trips must be at least 1")
    cpus = sorted(os.sched_getaffinity(0))
    placements = [("one core", cpus[0], cpus[0])]
    if len(cpus) > 1:
        placements.append(("two cores", cpus[0], cpus[1]))
    print("| placement | server user µs/trip | server sys µs/trip | server CPU µs/trip | round trip µs |")
    print("|---|---:|---:|---:|---:|")
    for name, c, s in placements:
        f = round_trips(args.trips, c, s)
        print(f"| {name} | {f['user_us']:.1f} | {f['sys_us']:.1f} | {f['user_us'] + f['sys_us']:.1f} "
              f"| {f['rtt_us']:.1f} |", flush=True)
    if len(cpus) == 1:
        print("(one CPU available: no two-core figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
