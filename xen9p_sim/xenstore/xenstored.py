"""A simulated xenstored: the real xenstore wire protocol on a Unix socket, in a thread or a process.

dom0 connects to SOCKET; after dom0 sends INTRODUCE for domid N, a guest connects to `SOCKET.dN` and is domain N.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from typing import Iterable

from xen9p_common.exitcodes import EXIT_UNAVAILABLE
from xen9p_common.platform.xsproto import PAYLOAD_MAX, XsMessage, XsType, errno_name, pack_message
from xen9p_sim.xenstore.access import Ctx
from xen9p_sim.xenstore.conn import Conn
from xen9p_sim.xenstore.requests import HANDLERS, split_args
from xen9p_sim.xenstore.store import Perms, Quotas, Store, XsFail
from xen9p_sim.xenstore.watches import watch_events

__all__ = ["Conn", "Domain", "Quotas", "XenstoredServer", "XsFail", "main"]

log = logging.getLogger("xen9p.sim.xenstored")


@dataclass
class Domain:
    domid: int
    listener: socket.socket | None = None
    conns: set = field(default_factory=set)
    target: int | None = None


class XenstoredServer:
    """A xenstored-compatible server. start()/stop() run it on background threads.

    Connections on `socket_path` are dom0 (privileged). INTRODUCE of domid N makes the
    server also listen on `socket_path + ".d" + str(N)`; connections there are domain N,
    confined like a real guest. RELEASE closes them, removes that socket, fires @releaseDomain.
    """

    def __init__(self, socket_path: str, *, quotas: Quotas | None = None, populate: bool = True) -> None:
        self.socket_path = socket_path
        self.quotas = quotas or Quotas()
        self.lock = threading.RLock()
        self.store = Store()
        self.conns: set[Conn] = set()
        self.domains: dict[int, Domain] = {}
        self.next_tx = 1
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._running = False
        if populate:
            # What xenstored and xencommons leave behind at boot.
            dom0 = Ctx(self, None)
            for path, value in (("/tool/xenstored", b""), ("/local/domain/0/name", b"Domain-0"),
                                ("/local/domain/0/domid", b"0")):
                dom0.write(path, value)

    # -- lifecycle --------------------------------------------------------

    def start(self) -> "XenstoredServer":
        # Running before listening: the accept thread closes clients that arrive while not running.
        self._running = True
        try:
            self._listener = self._listen(self.socket_path, 0)
        except BaseException:
            self._running = False
            raise
        return self

    def _listen(self, path: str, domid: int) -> socket.socket:
        _unlink_if_there(path)
        # Bind under a temporary name and rename once listening, so that a client that
        # sees the path never gets ECONNREFUSED.
        tmp = f"{path}.new"
        _unlink_if_there(tmp)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(tmp)
        s.listen(64)
        os.rename(tmp, path)
        t = threading.Thread(target=self._accept_loop, args=(s, domid), daemon=True, name=f"xs-accept-d{domid}")
        t.start()
        self._threads.append(t)
        return s

    def _accept_loop(self, listener: socket.socket, domid: int) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            conn = Conn(self, sock, domid)
            with self.lock:
                # Checked under the lock so stop() and RELEASE see every connection they must close.
                if not self._running or (domid and domid not in self.domains):
                    sock.close()
                    continue
                self.conns.add(conn)
                if domid:
                    self.domains[domid].conns.add(conn)
                conn.start()

    def stop(self) -> None:
        with self.lock:
            self._running = False
        listeners = [self._listener] + [d.listener for d in self.domains.values()]
        for s in listeners:
            if s is not None:
                _close_listener(s)
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            c.close()
        for c in conns:
            c.reader.join(5)
        for path in [self.socket_path] + [f"{self.socket_path}.d{d}" for d in self.domains]:
            _unlink_if_there(path)
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> "XenstoredServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def forget(self, conn: Conn) -> None:
        with self.lock:
            self.conns.discard(conn)
            dom = self.domains.get(conn.domid)
            if dom:
                dom.conns.discard(conn)

    def domain_socket(self, domid: int) -> str:
        return f"{self.socket_path}.d{domid}"


    def introduce_domain(self, domid: int) -> None:
        """Domain domid exists from now on; once running, its guests connect on domain_socket(domid)."""
        if domid not in self.domains:
            dom = Domain(domid)
            self.domains[domid] = dom
            if self._running:
                dom.listener = self._listen(self.domain_socket(domid), domid)

    def release_domain(self, domid: int) -> bool:
        """Forget domain domid: close its socket and connections. False if it was not introduced."""
        dom = self.domains.pop(domid, None)
        if dom is None:
            return False
        if dom.listener is not None:
            _close_listener(dom.listener)
            _unlink_if_there(self.domain_socket(domid))
        for c in list(dom.conns):
            c.close()
        return True

    # -- dispatch -------------------------------------------------------

    def handle(self, conn: Conn, msg: XsMessage) -> None:
        with self.lock:
            ctx = Ctx(self, conn)
            try:
                handler = HANDLERS.get(msg.type)
                if handler is None:
                    raise XsFail(errno.EINVAL)
                args = split_args(msg.payload, msg.type)
                reply = handler(self, ctx, msg, args)
            except XsFail as e:
                self._reply(conn, msg, XsType.ERROR, errno_name(e.errno).encode() + b"\0")
                return
            except Exception:  # a bug in the sim must not kill the server for everyone
                log.exception("dom%d: %r failed", conn.domid, msg)
                self._reply(conn, msg, XsType.ERROR, b"EIO\0")
                return
            if len(reply) > PAYLOAD_MAX:
                self._reply(conn, msg, XsType.ERROR, b"E2BIG\0")
                return
            self._reply(conn, msg, msg.type, reply)
            for c, data in ctx.after:
                c.send(data)

    def _reply(self, conn: Conn, msg: XsMessage, mtype: int, payload: bytes) -> None:
        conn.send(pack_message(mtype, msg.req_id, msg.tx_id, payload))


    # -- watches ----------------------------------------------------------

    def fire(self, path: str, removed: bool, perms: Perms, after: list, special: bool = False) -> None:
        """Queue WATCH_EVENTs: watches on path or a parent; for rm also watches below path."""
        watch_events(self.conns, self.domains, path, removed, perms, after, special)


def _close_listener(s: socket.socket) -> None:
    # shutdown() wakes a thread blocked in accept() on Linux; close() alone would not.
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def _unlink_if_there(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def main(argv: Iterable[str] | None = None) -> int:
    """`python -m xen9p_sim.xenstore.xenstored --socket PATH`: serve until SIGINT/SIGTERM."""
    ap = argparse.ArgumentParser(prog="xen9psim xenstored", description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True, help="Unix socket path for dom0 (guests use PATH.d<domid>)")
    ap.add_argument("--max-nodes", type=int, default=Quotas.max_nodes, help="nodes per unprivileged domain")
    ap.add_argument("--max-watches", type=int, default=Quotas.max_watches)
    ap.add_argument("--max-transactions", type=int, default=Quotas.max_transactions)
    ap.add_argument("--max-entry-size", type=int, default=Quotas.max_entry_size)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="xenstored: %(levelname)s %(message)s")
    quotas = Quotas(max_nodes=args.max_nodes, max_watches=args.max_watches,
                    max_transactions=args.max_transactions, max_entry_size=args.max_entry_size)
    stop = threading.Event()
    # Handlers only set a flag; the main thread does the work.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        server = XenstoredServer(args.socket, quotas=quotas).start()
    except OSError as e:
        log.error("cannot listen on %s: %s", args.socket, e)
        return EXIT_UNAVAILABLE
    log.info("listening on %s", args.socket)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
