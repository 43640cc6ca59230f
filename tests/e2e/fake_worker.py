"""A hand-written fake ring worker for xen9pd tests: speaks the worker protocol, maps nothing.

Behaviour per ring from XEN9P_FAKE_MODES="dom5/dev0=crash;dom6/dev0/ring1=hang" (longest match wins):
serve (default), crash (exit 3 at once), crash-after:SECS, hang (ready, then silent), noready, fatal.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import zmq

EXIT_CRASH = 3


def mode_for(ring: str, spec: str) -> str:
    best, mode = -1, "serve"
    for item in spec.split(";"):
        key, sep, val = item.strip().partition("=")
        if not sep:
            continue
        if (ring == key or ring.startswith(key + "/")) and len(key) > best:
            best, mode = len(key), val.strip()
    return mode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["ring"])
    for opt in ("platform", "sim-dir", "state", "export", "security-model", "supervisor"):
        ap.add_argument("--" + opt)
    for opt in ("domid", "devid", "ring", "ring-ref", "evtchn", "max-ring-order"):
        ap.add_argument("--" + opt, type=int, required=True)
    ap.add_argument("--spin-us", type=float)  # the real worker's command line, accepted and unused
    a = ap.parse_args(argv)
    name = f"dom{a.domid}/dev{a.devid}/ring{a.ring}"
    mode = mode_for(name, os.environ.get("XEN9P_FAKE_MODES", ""))
    hb = float(os.environ.get("XEN9P_FAKE_HEARTBEAT", "0.2"))
    if mode == "crash":
        print(f"fake worker {name}: crashing at once", file=sys.stderr)
        return EXIT_CRASH
    crash_at = None
    if mode.startswith("crash-after:"):
        crash_at = time.monotonic() + float(mode.split(":", 1)[1])

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append("sigterm"))
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.IDENTITY, name.encode())
    s.setsockopt(zmq.LINGER, 500)
    s.connect(a.supervisor)

    def send(t: str, **kw) -> None:
        s.send_json({"v": 1, "type": t, "pid": os.getpid(), **kw})

    send("hello", ring=name)
    if mode == "fatal":
        send("error", reason="fake: ring indexes beyond the ring", fatal=True)
    elif mode != "noready":
        send("ready")
    requests = 0
    next_hb = time.monotonic()
    while not stop:
        now = time.monotonic()
        if crash_at is not None and now >= crash_at:
            os._exit(EXIT_CRASH)
        if now >= next_hb and mode != "hang":
            requests += 10
            send("heartbeat", ts=time.time())
            send("stats", metrics={"requests_total": requests, "bytes_in_total": requests * 100,
                                   "bytes_out_total": requests * 4096, "errors_total": 0,
                                   "op": {"Tgetattr_total": requests}})
            next_hb = now + hb
        if s.poll(int(min(hb, 0.1) * 1000)):
            msg = s.recv_json()
            if msg.get("type") == "stop":
                stop.append("stop")
    send("bye", reason=stop[0])
    s.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
