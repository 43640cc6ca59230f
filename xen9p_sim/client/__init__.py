"""9P2000.L (and 9P2000.u: fs_u.py) client over any byte transport (sockets here, Xen rings elsewhere).

Used by the tests, the simulated guest and the benchmarks.
"""
from xen9p_sim.client.errors import ClientError, ConnectionClosed, Flushed, P9Error, RpcTimeout, UnexpectedReply
from xen9p_sim.client.fs import Client, Fid, Stat, split_path
from xen9p_sim.client.rpc import RpcClient
from xen9p_sim.client.transport import SocketTransport, Transport

__all__ = ["Client", "Fid", "Stat", "RpcClient", "Transport", "SocketTransport", "P9Error",
           "ClientError", "ConnectionClosed", "RpcTimeout", "Flushed", "UnexpectedReply",
           "split_path", "connect_unix"]


def connect_unix(path: str, *, msize: int = 65536, aname: str = "", uname: str = "root",
                 n_uname: int = 0, timeout: float = 30.0) -> tuple[Client, Fid]:
    """Connect, negotiate 9P2000.L and attach: the common case in one call."""
    c = Client(SocketTransport.connect_unix(path), timeout=timeout)
    try:
        c.version(msize)
        return c, c.attach(aname, uname, n_uname)
    except BaseException:
        c.close()
        raise
