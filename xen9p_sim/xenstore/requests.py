"""The simulated xenstored's request handlers: one function per xenstore message type.

Each takes (server, ctx, msg, args) with the server lock held, returns the reply payload or raises XsFail.
"""
from __future__ import annotations

import errno
from dataclasses import replace

from xen9p_common.platform.xsproto import PAYLOAD_MAX, XsMessage, XsType
from xen9p_sim.xenstore.access import Ctx
from xen9p_sim.xenstore.store import KIND_BITS, READ, WRITE, Tx, XsFail
from xen9p_sim.xenstore.watches import Watch, watch_event

OK = b"OK\0"


def split_args(payload: bytes, mtype: int) -> list[bytes]:
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


def _arg_path(ctx: Ctx, args: list[bytes], i: int = 0, *, watch: bool = False) -> str:
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


def _with_tx(ctx: Ctx, msg: XsMessage) -> None:
    if msg.tx_id:
        tx = ctx.conn.txs.get(msg.tx_id) if ctx.conn else None
        if tx is None:
            raise XsFail(errno.ENOENT)
        ctx.tx = tx


def _need_priv(ctx: Ctx) -> None:
    if not ctx.privileged:
        raise XsFail(errno.EACCES)


def _h_read(s, ctx, msg, args):
    _with_tx(ctx, msg)
    return ctx.lookup(_arg_path(ctx, args), READ).value


def _h_directory(s, ctx, msg, args):
    _with_tx(ctx, msg)
    node = ctx.lookup(_arg_path(ctx, args), READ)
    return b"".join(c.encode() + b"\0" for c in node.children)


def _h_directory_part(s, ctx, msg, args):
    _with_tx(ctx, msg)
    path = _arg_path(ctx, args)
    offset = _arg_int(args, 1)
    node = ctx.lookup(path, READ)
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
    _with_tx(ctx, msg)
    node = ctx.lookup(_arg_path(ctx, args), READ)
    return b"".join(f"{k}{d}".encode() + b"\0" for k, d in node.perms)


def _h_write(s, ctx, msg, args):
    _with_tx(ctx, msg)
    ctx.write(_arg_path(ctx, args), args[1])
    return OK


def _h_mkdir(s, ctx, msg, args):
    _with_tx(ctx, msg)
    ctx.write(_arg_path(ctx, args), b"", only_create=True)
    return OK


def _h_rm(s, ctx, msg, args):
    _with_tx(ctx, msg)
    ctx.rm(_arg_path(ctx, args))
    return OK


def _h_set_perms(s, ctx, msg, args):
    _with_tx(ctx, msg)
    path = _arg_path(ctx, args)
    perms = []
    for raw in args[1:]:
        t = raw.decode("ascii", "replace")
        if len(t) < 2 or t[0] not in KIND_BITS or not t[1:].isdigit():
            raise XsFail(errno.EINVAL)
        perms.append((t[0], int(t[1:])))
    if not perms:
        raise XsFail(errno.EINVAL)
    node = ctx.lookup(path, WRITE)
    if not ctx.privileged and perms[0][1] != node.perms[0][1]:
        raise XsFail(errno.EPERM)  # only dom0 may give a node away
    ctx.view().put(path, replace(node, perms=tuple(perms)))
    ctx.fire(path, False, node.perms)
    return OK


def _watch_args(ctx: Ctx, args: list[bytes]) -> tuple[str, bytes]:
    path = _arg_path(ctx, args, watch=True)
    if len(args) < 2:
        raise XsFail(errno.EINVAL)
    return path, args[1]


def _h_watch(s, ctx, msg, args):
    path, token = _watch_args(ctx, args)
    conn = ctx.conn
    if any(w.path == path and w.token == token for w in conn.watches):
        raise XsFail(errno.EEXIST)
    if not ctx.privileged and len(conn.watches) >= s.quotas.max_watches:
        raise XsFail(errno.E2BIG)
    raw = args[0].decode("ascii")
    rel = "" if raw.startswith(("/", "@")) else f"/local/domain/{ctx.domid}"
    conn.watches.append(Watch(path, token, rel))
    # The initial event fires unconditionally, whether or not the node exists or is readable.
    ctx.after.append((conn, watch_event(args[0], token)))
    return OK


def _h_unwatch(s, ctx, msg, args):
    path, token = _watch_args(ctx, args)
    for w in ctx.conn.watches:
        if w.path == path and w.token == token:
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
    ctx.conn.txs[tx_id] = Tx(s.store, tx_id)
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
    s.introduce_domain(domid)
    s.fire("@introduceDomain", False, (), ctx.after, special=True)
    return OK


def _h_release(s, ctx, msg, args):
    _need_priv(ctx)
    if not s.release_domain(_arg_int(args, 0)):
        raise XsFail(errno.ENOENT)
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


HANDLERS = {
    XsType.READ: _h_read, XsType.DIRECTORY: _h_directory, XsType.DIRECTORY_PART: _h_directory_part,
    XsType.GET_PERMS: _h_get_perms, XsType.WRITE: _h_write, XsType.MKDIR: _h_mkdir, XsType.RM: _h_rm,
    XsType.SET_PERMS: _h_set_perms, XsType.WATCH: _h_watch, XsType.UNWATCH: _h_unwatch,
    XsType.RESET_WATCHES: _h_reset_watches, XsType.TRANSACTION_START: _h_tx_start,
    XsType.TRANSACTION_END: _h_tx_end, XsType.INTRODUCE: _h_introduce, XsType.RELEASE: _h_release,
    XsType.RESUME: _h_resume, XsType.SET_TARGET: _h_set_target,
    XsType.GET_DOMAIN_PATH: _h_get_domain_path, XsType.IS_DOMAIN_INTRODUCED: _h_is_introduced,
}
