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
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Iterable

from ..xswire import (ERROR_NAMES, PAYLOAD_MAX, FrameReader, WireError, XsMessage, XsType, errno_name,
                      pack_message, path_error)

log = logging.getLogger("xen9p.sim.xenstored")

Perms = tuple[tuple[str, int], ...]   # (kind, domid); the first entry is owner + default
READ, WRITE = 1, 2
_KIND_BITS = {"n": 0, "r": READ, "w": WRITE, "b": READ | WRITE}


class XsFail(Exception):
    """An operation fails with this errno (sent back as an ERROR reply)."""

    def __init__(self, err: int) -> None:
        super().__init__(errno.errorcode.get(err, str(err)))
        self.errno = err


@dataclass(frozen=True)
class Quotas:
    """Limits for unprivileged domains (xenstored's defaults); dom0 is exempt like in xenstored."""

    max_nodes: int = 1000          # nodes owned per domain -> ENOSPC
    max_entry_size: int = 2048     # bytes of one value -> ENOSPC
    max_watches: int = 128         # watches per connection -> E2BIG
    max_transactions: int = 10     # open transactions per connection -> ENOSPC
    max_outstanding: int = 1024    # queued replies/events before a reader that never reads is dropped


@dataclass(frozen=True)
class Node:
    value: bytes
    perms: Perms
    children: tuple[str, ...]
    gen: int


def perm_bits(perms: Perms, domid: int, privileged: bool, target: int | None) -> int:
    """xenstored's rule: privileged and owner get all; then an explicit entry; else the default."""
    if privileged or perms[0][1] == domid or (target is not None and perms[0][1] == target):
        return READ | WRITE
    for kind, d in perms[1:]:
        if d == domid or (target is not None and d == target):
            return _KIND_BITS[kind]
    return _KIND_BITS[perms[0][0]]


def parent_of(path: str) -> str:
    i = path.rstrip("/").rfind("/")
    return "/" if i <= 0 else path[:i]


def basename(path: str) -> str:
    return path[path.rfind("/") + 1:]


def is_under(path: str, top: str) -> bool:
    """path is top or below it: /a covers /a and /a/b, not /ab."""
    return path == top or top == "/" or path.startswith(top + "/")


class _Tx:
    """One transaction: a lazily copied overlay with the generation seen at first access."""

    def __init__(self, store: "Store", tx_id: int) -> None:
        self.store = store
        self.tx_id = tx_id
        self.overlay: dict[str, Node | None] = {}
        self.seen: dict[str, int | None] = {}
        self.events: list[tuple[str, bool, Perms]] = []

    def get(self, path: str) -> Node | None:
        if path not in self.overlay:
            node = self.store.nodes.get(path)
            self.seen[path] = node.gen if node else None
            self.overlay[path] = node
        return self.overlay[path]

    def put(self, path: str, node: Node | None) -> None:
        self.get(path)
        self.overlay[path] = node


class Store:
    """The node tree; every method is called with the server lock held."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.gen = 0
        self.owned: dict[int, int] = {}
        root_perms: Perms = (("n", 0),)
        self.nodes["/"] = Node(b"", root_perms, (), self._next_gen())

    def _next_gen(self) -> int:
        self.gen += 1
        return self.gen

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def put(self, path: str, node: Node | None) -> None:
        old = self.nodes.get(path)
        if old is not None:
            self.owned[old.perms[0][1]] = self.owned.get(old.perms[0][1], 1) - 1
        if node is None:
            self.nodes.pop(path, None)
        else:
            node = replace(node, gen=self._next_gen())
            self.nodes[path] = node
            self.owned[node.perms[0][1]] = self.owned.get(node.perms[0][1], 0) + 1

    def commit(self, tx: _Tx) -> None:
        for path, gen in tx.seen.items():
            node = self.nodes.get(path)
            if (node.gen if node else None) != gen:
                raise XsFail(errno.EAGAIN)
        for path, node in tx.overlay.items():
            if path in tx.seen and node is not self.nodes.get(path):
                self.put(path, node)


@dataclass
class Watch:
    path: str        # absolute, or @special
    token: bytes
    relative: str    # the domain path prefix to strip from events, or "" for absolute watches


@dataclass
class Domain:
    domid: int
    listener: socket.socket | None = None
    conns: set = field(default_factory=set)
    target: int | None = None


class Conn:
    """One client connection: a reader thread, an output queue drained by a writer thread."""

    def __init__(self, server: "XenstoredServer", sock: socket.socket, domid: int) -> None:
        self.server = server
        self.sock = sock
        self.domid = domid
        self.watches: list[Watch] = []
        self.txs: dict[int, _Tx] = {}
        self.out: deque[bytes] = deque()
        self.out_cv = threading.Condition()
        self.closed = False
        self.reader = threading.Thread(target=self._read_loop, daemon=True, name=f"xs-conn-d{domid}")
        self.writer = threading.Thread(target=self._write_loop, daemon=True, name=f"xs-write-d{domid}")

    @property
    def privileged(self) -> bool:
        return self.domid == 0

    def start(self) -> None:
        self.writer.start()  # first: the reader joins it on exit
        self.reader.start()

    def send(self, data: bytes) -> None:
        with self.out_cv:
            if self.closed:
                return
            if len(self.out) >= self.server.quotas.max_outstanding:
                log.warning("dom%d connection does not read its replies/events: dropping it", self.domid)
                self._close_locked()
                return
            self.out.append(data)
            self.out_cv.notify()

    def close(self) -> None:
        with self.out_cv:
            self._close_locked()

    def _close_locked(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.out_cv.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write_loop(self) -> None:
        try:
            while True:
                with self.out_cv:
                    while not self.out and not self.closed:
                        self.out_cv.wait()
                    if self.closed:
                        return
                    data = self.out.popleft()
                self.sock.sendall(data)
        except OSError:
            self.close()

    def _read_loop(self) -> None:
        frames = FrameReader()
        try:
            while not self.closed:
                data = self.sock.recv(65536)
                if not data:
                    break
                for msg in frames.feed(data):
                    self.server.handle(self, msg)
        except WireError as e:
            log.info("dom%d sent a malformed frame (%s): closing its connection", self.domid, e)
        except OSError:
            pass
        finally:
            self.close()
            self.server.forget(self)
            self.writer.join(5)
            self.sock.close()


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
            dom0 = _Ctx(self, None)
            for path, value in (("/tool/xenstored", b""), ("/local/domain/0/name", b"Domain-0"),
                                ("/local/domain/0/domid", b"0")):
                self._write(dom0, path, value)

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
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        # Bind under a temporary name and rename once listening, so that a client that
        # sees the path never gets ECONNREFUSED.
        tmp = f"{path}.new"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
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
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
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

    # -- dispatch -------------------------------------------------------

    def handle(self, conn: Conn, msg: XsMessage) -> None:
        with self.lock:
            ctx = _Ctx(self, conn)
            try:
                handler = _HANDLERS.get(msg.type)
                if handler is None:
                    raise XsFail(errno.EINVAL)
                args = _split_args(msg.payload, msg.type)
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

    # -- node operations (lock held) ----------------------------------------

    def _view(self, ctx: "_Ctx"):
        return ctx.tx if ctx.tx is not None else self.store

    def _can(self, ctx: "_Ctx", node: Node, want: int) -> bool:
        return perm_bits(node.perms, ctx.domid, ctx.privileged, ctx.target) & want == want

    def _lookup(self, ctx: "_Ctx", path: str, want: int) -> Node:
        """The node if it exists and ctx may `want` it; else ENOENT, or EACCES where ENOENT would leak."""
        view = self._view(ctx)
        node = view.get(path)
        if node is not None:
            if not self._can(ctx, node, want):
                raise XsFail(errno.EACCES)
            return node
        # Like xenstored: ENOENT only if the nearest existing ancestor grants the same access.
        p = path
        while p != "/":
            p = parent_of(p)
            anc = view.get(p)
            if anc is not None:
                raise XsFail(errno.ENOENT if self._can(ctx, anc, want) else errno.EACCES)
        raise XsFail(errno.ENOENT)

    def _write(self, ctx: "_Ctx", path: str, value: bytes, *, only_create: bool = False) -> None:
        view = self._view(ctx)
        if not ctx.privileged and len(value) > self.quotas.max_entry_size:
            raise XsFail(errno.ENOSPC)
        try:
            node = self._lookup(ctx, path, WRITE)
        except XsFail as e:
            if e.errno != errno.ENOENT:
                raise
            node = None
        if node is not None:
            if not only_create:
                view.put(path, replace(node, value=value))
                ctx.fire(path, False, node.perms)
            return
        perms = self._create(ctx, view, path, value)
        # One event for the written node covers its implicit parents: every watch on one of them matches it.
        ctx.fire(path, False, perms)

    def _create(self, ctx: "_Ctx", view, path: str, value: bytes) -> Perms:
        """Create path and missing parents; children inherit the parent's perms, owned by the creator."""
        parent_path = parent_of(path)
        parent = view.get(parent_path)
        if parent is None:
            self._create(ctx, view, parent_path, b"")
            parent = view.get(parent_path)
        elif not self._can(ctx, parent, WRITE):
            raise XsFail(errno.EACCES)
        perms = parent.perms
        if not ctx.privileged:
            perms = ((perms[0][0], ctx.domid),) + perms[1:]
            if self.store.owned.get(ctx.domid, 0) >= self.quotas.max_nodes:
                raise XsFail(errno.ENOSPC)
        view.put(path, Node(value, perms, (), 0))
        view.put(parent_path, replace(parent, children=parent.children + (basename(path),)))
        return perms

    def _rm(self, ctx: "_Ctx", path: str) -> None:
        view = self._view(ctx)
        if path == "/":
            raise XsFail(errno.EINVAL)
        try:
            node = self._lookup(ctx, path, WRITE)
        except XsFail as e:
            # Removing a missing node is fine as long as its parent exists.
            if e.errno == errno.ENOENT and view.get(parent_of(path)) is not None:
                return
            raise
        parent_path = parent_of(path)
        parent = view.get(parent_path)
        name = basename(path)
        view.put(parent_path, replace(parent, children=tuple(c for c in parent.children if c != name)))
        self._rm_tree(view, path, node)
        ctx.fire(path, True, node.perms)

    def _rm_tree(self, view, path: str, node: Node) -> None:
        for child in node.children:
            cpath = path.rstrip("/") + "/" + child
            cnode = view.get(cpath)
            if cnode is not None:
                self._rm_tree(view, cpath, cnode)
        view.put(path, None)

    # -- watches ----------------------------------------------------------

    def fire(self, path: str, removed: bool, perms: Perms, after: list, special: bool = False) -> None:
        """Queue WATCH_EVENTs: watches on path or a parent; for rm also watches below path."""
        for c in list(self.conns):
            if not special:
                dom = self.domains.get(c.domid)
                target = dom.target if dom else None
                readable = perm_bits(perms, c.domid, c.privileged, target) & READ
            for w in c.watches:
                if special:
                    if w.path != path:
                        continue
                    ev = path
                elif w.path.startswith("@"):
                    continue
                elif is_under(path, w.path):
                    ev = path
                elif removed and is_under(w.path, path):
                    ev = w.path
                else:
                    continue
                if not special and not readable:
                    continue
                if w.relative and is_under(ev, w.relative) and ev != w.relative:
                    ev = ev[len(w.relative) + 1:]
                after.append((c, pack_message(XsType.WATCH_EVENT, 0, 0, ev.encode() + b"\0" + w.token + b"\0")))


class _Ctx:
    """Who is asking (domain, privilege, transaction) and the events to send after the reply."""

    def __init__(self, server: XenstoredServer, conn: Conn | None, tx: _Tx | None = None) -> None:
        self.server = server
        self.conn = conn
        self.domid = conn.domid if conn else 0
        self.privileged = conn.privileged if conn else True
        dom = server.domains.get(self.domid)
        self.target = dom.target if dom else None
        self.tx = tx
        self.after: list[tuple[Conn, bytes]] = []

    def fire(self, path: str, removed: bool, perms: Perms) -> None:
        if self.tx is not None:
            self.tx.events.append((path, removed, perms))
        else:
            self.server.fire(path, removed, perms, self.after)

    def abs_path(self, raw: str, *, watch: bool = False) -> str:
        if watch and raw.startswith("@"):
            if path_error(raw, watch=True):
                raise XsFail(errno.EINVAL)
            return raw
        if path_error(raw):
            raise XsFail(errno.EINVAL)
        if raw.startswith("/"):
            return raw
        return f"/local/domain/{self.domid}/{raw}"


def _split_args(payload: bytes, mtype: int) -> list[bytes]:
    """NUL-separated arguments; WRITE's value is the raw remainder after the first NUL."""
    if mtype == XsType.WRITE:
        path, sep, value = payload.partition(b"\0")
        if not sep:
            raise XsFail(errno.EINVAL)
        return [path, value]
    parts = payload.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return parts


def _arg_path(ctx: _Ctx, args: list[bytes], i: int = 0, *, watch: bool = False) -> str:
    if len(args) <= i:
        raise XsFail(errno.EINVAL)
    try:
        raw = args[i].decode("ascii")
    except UnicodeDecodeError:
        raise XsFail(errno.EINVAL) from None
    return ctx.abs_path(raw, watch=watch)


def _arg_int(args: list[bytes], i: int) -> int:
    if len(args) <= i or not args[i].isdigit():
        raise XsFail(errno.EINVAL)
    return int(args[i])


def _with_tx(server: XenstoredServer, ctx: _Ctx, msg: XsMessage) -> None:
    if msg.tx_id:
        tx = ctx.conn.txs.get(msg.tx_id) if ctx.conn else None
        if tx is None:
            raise XsFail(errno.ENOENT)
        ctx.tx = tx


def _need_priv(ctx: _Ctx) -> None:
    if not ctx.privileged:
        raise XsFail(errno.EACCES)


OK = b"OK\0"


def _h_read(s, ctx, msg, args):
    _with_tx(s, ctx, msg)
    return s._lookup(ctx, _arg_path(ctx, args), READ).value


def _h_directory(s, ctx, msg, args):
    _with_tx(s, ctx, msg)
    node = s._lookup(ctx, _arg_path(ctx, args), READ)
    return b"".join(c.encode() + b"\0" for c in node.children)


def _h_directory_part(s, ctx, msg, args):
    _with_tx(s, ctx, msg)
    path = _arg_path(ctx, args)
    offset = _arg_int(args, 1)
    node = s._lookup(ctx, path, READ)
    gen = b"%d\0" % node.gen
    kids = b"".join(c.encode() + b"\0" for c in node.children)
    if offset >= len(kids):
        return gen + b"\0"
    room = PAYLOAD_MAX - len(gen) - 1
    chunk, pos = b"", offset
    while pos < len(kids):
        end = kids.index(b"\0", pos) + 1
        if len(chunk) + end - pos > room:
            break
        chunk += kids[pos:end]
        pos = end
    return gen + chunk + (b"\0" if pos == len(kids) else b"")


def _h_get_perms(s, ctx, msg, args):
    _with_tx(s, ctx, msg)
    node = s._lookup(ctx, _arg_path(ctx, args), READ)
    return b"".join(f"{k}{d}".encode() + b"\0" for k, d in node.perms)


def _h_write(s, ctx, msg, args):
    _with_tx(s, ctx, msg)
    s._write(ctx, _arg_path(ctx, args), args[1])
    return OK


def _h_mkdir(s, ctx, msg, args):
    _with_tx(s, ctx, msg)
    s._write(ctx, _arg_path(ctx, args), b"", only_create=True)
    return OK


def _h_rm(s, ctx, msg, args):
    _with_tx(s, ctx, msg)
    s._rm(ctx, _arg_path(ctx, args))
    return OK


def _h_set_perms(s, ctx, msg, args):
    _with_tx(s, ctx, msg)
    path = _arg_path(ctx, args)
    perms = []
    for raw in args[1:]:
        t = raw.decode("ascii", "replace")
        if len(t) < 2 or t[0] not in _KIND_BITS or not t[1:].isdigit():
            raise XsFail(errno.EINVAL)
        perms.append((t[0], int(t[1:])))
    if not perms:
        raise XsFail(errno.EINVAL)
    node = s._lookup(ctx, path, WRITE)
    if not ctx.privileged and perms[0][1] != node.perms[0][1]:
        raise XsFail(errno.EPERM)  # only dom0 may give a node away
    s._view(ctx).put(path, replace(node, perms=tuple(perms)))
    ctx.fire(path, False, node.perms)
    return OK


def _h_watch(s, ctx, msg, args):
    path = _arg_path(ctx, args, watch=True)
    if len(args) < 2:
        raise XsFail(errno.EINVAL)
    token = args[1]
    conn = ctx.conn
    if any(w.path == path and w.token == token for w in conn.watches):
        raise XsFail(errno.EEXIST)
    if not ctx.privileged and len(conn.watches) >= s.quotas.max_watches:
        raise XsFail(errno.E2BIG)
    raw = args[0].decode("ascii")
    rel = "" if raw.startswith(("/", "@")) else f"/local/domain/{ctx.domid}"
    conn.watches.append(Watch(path, token, rel))
    # The initial event fires unconditionally, whether or not the node exists or is readable.
    ctx.after.append((conn, pack_message(XsType.WATCH_EVENT, 0, 0, args[0] + b"\0" + token + b"\0")))
    return OK


def _h_unwatch(s, ctx, msg, args):
    path = _arg_path(ctx, args, watch=True)
    if len(args) < 2:
        raise XsFail(errno.EINVAL)
    for w in ctx.conn.watches:
        if w.path == path and w.token == args[1]:
            ctx.conn.watches.remove(w)
            return OK
    raise XsFail(errno.ENOENT)


def _h_reset_watches(s, ctx, msg, args):
    ctx.conn.watches.clear()
    ctx.conn.txs.clear()
    return OK


def _h_tx_start(s, ctx, msg, args):
    if msg.tx_id:
        raise XsFail(errno.EBUSY)
    if not ctx.privileged and len(ctx.conn.txs) >= s.quotas.max_transactions:
        raise XsFail(errno.ENOSPC)
    tx_id = s.next_tx
    s.next_tx = s.next_tx % 0xFFFFFFFF + 1
    ctx.conn.txs[tx_id] = _Tx(s.store, tx_id)
    return b"%d\0" % tx_id


def _h_tx_end(s, ctx, msg, args):
    tx = ctx.conn.txs.pop(msg.tx_id, None) if msg.tx_id else None
    if tx is None:
        raise XsFail(errno.ENOENT)
    if not args or args[0] not in (b"T", b"F"):
        raise XsFail(errno.EINVAL)
    if args[0] == b"T":
        s.store.commit(tx)
        for path, removed, perms in tx.events:
            s.fire(path, removed, perms, ctx.after)
    return OK


def _h_introduce(s, ctx, msg, args):
    _need_priv(ctx)
    domid = _arg_int(args, 0)
    _arg_int(args, 1)
    _arg_int(args, 2)
    if domid == 0 or domid >= 0x7FF0:
        raise XsFail(errno.EINVAL)
    if domid not in s.domains:
        dom = Domain(domid)
        s.domains[domid] = dom
        if s._running:
            dom.listener = s._listen(s.domain_socket(domid), domid)
    s.fire("@introduceDomain", False, (), ctx.after, special=True)
    return OK


def _h_release(s, ctx, msg, args):
    _need_priv(ctx)
    domid = _arg_int(args, 0)
    dom = s.domains.pop(domid, None)
    if dom is None:
        raise XsFail(errno.ENOENT)
    if dom.listener is not None:
        _close_listener(dom.listener)
        try:
            os.unlink(s.domain_socket(domid))
        except FileNotFoundError:
            pass
    for c in list(dom.conns):
        c.close()
    s.fire("@releaseDomain", False, (), ctx.after, special=True)
    return OK


def _h_resume(s, ctx, msg, args):
    _need_priv(ctx)
    if _arg_int(args, 0) not in s.domains:
        raise XsFail(errno.ENOENT)
    return OK


def _h_set_target(s, ctx, msg, args):
    _need_priv(ctx)
    domid, target = _arg_int(args, 0), _arg_int(args, 1)
    if domid not in s.domains:
        raise XsFail(errno.ENOENT)
    s.domains[domid].target = target
    return OK


def _h_get_domain_path(s, ctx, msg, args):
    return b"/local/domain/%d\0" % _arg_int(args, 0)


def _h_is_introduced(s, ctx, msg, args):
    domid = _arg_int(args, 0)
    return b"T\0" if domid == 0 or domid in s.domains else b"F\0"


_HANDLERS = {
    XsType.READ: _h_read, XsType.DIRECTORY: _h_directory, XsType.DIRECTORY_PART: _h_directory_part,
    XsType.GET_PERMS: _h_get_perms, XsType.WRITE: _h_write, XsType.MKDIR: _h_mkdir, XsType.RM: _h_rm,
    XsType.SET_PERMS: _h_set_perms, XsType.WATCH: _h_watch, XsType.UNWATCH: _h_unwatch,
    XsType.RESET_WATCHES: _h_reset_watches, XsType.TRANSACTION_START: _h_tx_start,
    XsType.TRANSACTION_END: _h_tx_end, XsType.INTRODUCE: _h_introduce, XsType.RELEASE: _h_release,
    XsType.RESUME: _h_resume, XsType.SET_TARGET: _h_set_target,
    XsType.GET_DOMAIN_PATH: _h_get_domain_path, XsType.IS_DOMAIN_INTRODUCED: _h_is_introduced,
}


def _close_listener(s: socket.socket) -> None:
    # shutdown() wakes a thread blocked in accept() on Linux; close() alone would not.
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def main(argv: Iterable[str] | None = None) -> int:
    """`python -m xen9p_common.platform.sim.xenstored --socket PATH`: serve until SIGINT/SIGTERM."""
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
        return 69
    log.info("listening on %s", args.socket)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
