"""Errors raised by the 9P client: server errors carry the errno from Rlerror.

All derive from xen9p_common.errors (ProtocolError for what the peer answered).
"""
from __future__ import annotations

import errno as _errno
import os

from xen9p_common.errors import ProtocolError, Xen9pError


class P9Error(ProtocolError):
    """The server answered Rlerror (or a 9P2000.u Rerror); `errno` is its ecode, `ename` the
    text of an Rerror (None for Rlerror and for errors the client made up)."""

    def __init__(self, err: int, msg: str = "", ename: str | None = None) -> None:
        name = _errno.errorcode.get(err, str(err))
        self.ename = ename
        super().__init__(err, msg or f"{name}: {os.strerror(err)}")


class UnexpectedReply(ProtocolError):
    """The server answered with a message type that does not match the request."""

    def __init__(self, msg: str) -> None:
        super().__init__(_errno.EPROTO, msg)


class ClientError(Xen9pError):
    """The client could not complete a request (no reply, connection gone, flushed)."""


class ConnectionClosed(ClientError):
    """The transport is closed or the peer went away; pending requests fail with this."""


class RpcTimeout(ClientError, TimeoutError):
    """No reply within the deadline; the tag stays reserved until a reply or a flush."""


class Flushed(ClientError):
    """The request was cancelled by Tflush before the server answered it."""
