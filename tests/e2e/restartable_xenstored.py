"""A sim xenstored process that can go down and come back over the same socket, keeping its store.

`python -m tests.e2e.restartable_xenstored --socket PATH`: SIGUSR1 takes it down for dom0 (every
connection on the dom0 socket dropped, its watches and transactions with it, the socket removed:
clients get ECONNRESET, then ENOENT); SIGUSR2 brings it back on the same path with the same nodes,
as xenstored does after a restart that restores its database (live update). Guests' connections
stay: on Xen they are shared pages that a restarted xenstored takes up again, not sockets. Each
change is confirmed on stdout ("down" / "up") once complete. RestartableXenstored drives it from a
test with SimXenstored's interface.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading

from tests.e2e.xen9pd_helpers import ROOT, SimXenstored, env_for_children, wait_for
from xen9p_sim.xenstore.xenstored import XenstoredServer


class RestartableXenstored(SimXenstored):
    """SimXenstored whose process is this module's: down() and up() wait until the change is complete."""

    def __init__(self, sim_dir: str) -> None:
        self.sock = os.path.join(sim_dir, "xenstored.sock")
        self.log_path = os.path.join(sim_dir, "xenstored.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.restartable_xenstored", "--socket", self.sock],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env_for_children(), cwd=ROOT)
        self.changes = 0
        wait_for(self._answers, 10, "restartable xenstored to answer")
        assert self.proc.poll() is None, "restartable xenstored died"

    def _confirmed(self) -> int:
        with open(self.log_path, "rb") as f:
            return sum(1 for line in f if line.strip() in (b"down", b"up"))

    def _change(self, sig: int, what: str) -> None:
        self.changes += 1
        self.proc.send_signal(sig)
        wait_for(lambda: self._confirmed() >= self.changes, 10, f"xenstored {what}")

    def down(self) -> None:
        self._change(signal.SIGUSR1, "down")
        assert not os.path.exists(self.sock)

    def up(self) -> None:
        self._change(signal.SIGUSR2, "up")
        wait_for(self._answers, 10, "xenstored to answer again")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.e2e.restartable_xenstored")
    ap.add_argument("--socket", required=True)
    args = ap.parse_args(argv)
    server = XenstoredServer(args.socket).start()
    todo: list[str] = []
    cv = threading.Condition()

    def queue(what: str) -> None:  # handlers only queue; the main thread does the work
        with cv:
            todo.append(what)
            cv.notify()

    signal.signal(signal.SIGUSR1, lambda *_: queue("down"))
    signal.signal(signal.SIGUSR2, lambda *_: queue("up"))
    signal.signal(signal.SIGTERM, lambda *_: queue("exit"))
    print("listening", flush=True)
    while True:
        with cv:
            cv.wait_for(lambda: todo)
            what = todo.pop(0)
        if what == "exit":
            server.stop()
            return 0
        if what == "down":
            down_for_dom0(server)
        else:
            server.start()  # listens on the dom0 socket again; the store and the domains are as they were
        print(what, flush=True)


def down_for_dom0(server: XenstoredServer) -> None:
    """The dom0 socket and its connections (with their watches) gone; the store and guests stay."""
    listener, server._listener = server._listener, None
    listener.shutdown(socket.SHUT_RDWR)  # wakes its accept thread, which ends
    listener.close()
    os.unlink(server.socket_path)
    with server.lock:
        dom0 = [c for c in server.conns if c.domid == 0]
    for c in dom0:
        c.close()
    for c in dom0:
        c.reader.join(10)


if __name__ == "__main__":
    raise SystemExit(main())
