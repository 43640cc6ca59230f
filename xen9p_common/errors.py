"""The one exception hierarchy of xen9p.

Every error a component raises on purpose derives from Xen9pError; errors that
map to a 9P Rlerror carry an errno.
"""
from __future__ import annotations

import errno as _errno
import os


class Xen9pError(Exception):
    """Base of every error xen9p raises on purpose."""


class ProtocolError(Xen9pError):
    """A peer sent something that breaks the protocol; carries an errno for Rlerror."""

    def __init__(self, err: int = _errno.EPROTO, msg: str = "") -> None:
        self.errno = err
        super().__init__(msg or os.strerror(err))


class DecodeError(ProtocolError):
    """A 9P frame could not be decoded."""

    def __init__(self, msg: str, err: int = _errno.EPROTO) -> None:
        super().__init__(err, msg)


class XenStoreError(Xen9pError):
    """A xenstore request failed; `errno` is the errno the store answered with."""

    def __init__(self, err: int, msg: str = "") -> None:
        self.errno = err
        super().__init__(msg or os.strerror(err))


class PlatformError(Xen9pError):
    """A grant map, event channel or other hypervisor operation failed; carries an errno."""

    def __init__(self, msg: str = "", err: int = _errno.EIO) -> None:
        self.errno = err
        super().__init__(msg or os.strerror(err))


class RingError(ProtocolError):
    """The frontend broke the ring protocol: the device must be disconnected."""


class ConfigError(Xen9pError):
    """A configuration value is invalid; `key` names it."""

    def __init__(self, key: str, msg: str) -> None:
        self.key = key
        super().__init__(f"{key}: {msg}")
