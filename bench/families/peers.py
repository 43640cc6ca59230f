"""peers: the xen9p server core on its socket transport vs diod (C), same load generator, same ops.

Both at msize 65536 (diod's cap), files removed by Twalk+Tremove (diod lacks Tunlinkat); every connection is its own 9P session. Ratios are taken in the report.
"""
from __future__ import annotations

from ..loadgen import LoadPool
from ..runner import Context, run_matrix
from ..targets import SocketServer, TargetError, diod_missing, xen9p_socket_missing

NAME = "peers"
MSIZE = 65536
LARGE = MSIZE - 24  # the largest Tread/Twrite payload at this msize


def missing(ctx: Context) -> str | None:
    return xen9p_socket_missing()


def _serve(ctx: Context, kind: str) -> None:
    p = ctx.profile
    try:
        srv = SocketServer(kind, ctx.base, ctx.export)
    except TargetError as e:
        ctx.skip(NAME, kind, str(e))
        return
    ops = [(op, 0) for op in p.small_ops] + [("read", 4096), ("write", 4096), ("read", LARGE), ("write", LARGE)]
    try:
        for conns in p.socket_conns:
            depths = (1,) if conns == 1 else (p.socket_depth,)
            pool = LoadPool(srv.channels(conns), tag_stride=1)
            pool.server_dead = srv.dead_reason
            try:
                msizes = pool.call_all("version", MSIZE)
                if min(msizes) != MSIZE:
                    ctx.log(f"{srv.name}: msize negotiated {msizes}")
                pool.call_all("attach", (srv.aname, "root"))
                # Twalk + Tremove on both servers: diod has no Tunlinkat, and the ops must be the same.
                if not run_matrix(ctx, NAME, srv.name, pool, srv.pids, conns, depths, ops, min(msizes),
                                  srv.alive, extra={"remove": True}):
                    ctx.skip(NAME, f"{srv.name} {conns} conns: the rest", "the server or a connection broke")
                    return
            finally:
                pool.close()
    finally:
        srv.close()


def run(ctx: Context) -> None:
    _serve(ctx, "xen9p")
    why = diod_missing()
    if why:
        ctx.skip(NAME, "diod", why)
    else:
        _serve(ctx, "diod")
