"""The xenstore wire format (xs_wire.h), sans-IO: header, message types, errno names, framing, path rules.

Shared by our client (xswire) and the simulated xenstored; nothing here does I/O.
"""
from __future__ import annotations

import enum
import errno
import re
import struct
from dataclasses import dataclass

from ..errors import XenStoreError

HEADER = struct.Struct("<IIII")  # type, req_id, tx_id, len
PAYLOAD_MAX = 4096
ABS_PATH_MAX = 3072
REL_PATH_MAX = 2048


class XsType(enum.IntEnum):
    DEBUG = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


# The errno names xenstored may answer with (xsd_errors in xs_wire.h).
ERROR_NAMES = ("EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
               "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM")


def errno_name(err: int) -> str:
    """The wire name for an errno; errnos outside the xenstore list become EIO."""
    name = errno.errorcode.get(err, "EIO")
    return name if name in ERROR_NAMES else "EIO"


def errno_from_name(name: str) -> int:
    """The errno for a wire name; like libxenstore, an unknown name means EINVAL."""
    if name in ERROR_NAMES:
        return getattr(errno, name)
    return errno.EINVAL


@dataclass(frozen=True)
class XsMessage:
    type: int
    req_id: int
    tx_id: int
    payload: bytes

    def pack(self) -> bytes:
        return pack_message(self.type, self.req_id, self.tx_id, self.payload)

    def __repr__(self) -> str:
        p = self.payload if len(self.payload) <= 64 else self.payload[:64] + b"..."
        try:
            t = XsType(self.type).name
        except ValueError:
            t = str(self.type)
        return f"XsMessage({t}, req_id={self.req_id}, tx_id={self.tx_id}, {p!r})"


class WireError(XenStoreError):
    """A peer broke the framing (oversized payload): the connection cannot be resynchronised."""

    def __init__(self, msg: str) -> None:
        super().__init__(errno.EPROTO, msg)


def pack_message(mtype: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    if len(payload) > PAYLOAD_MAX:
        raise XenStoreError(errno.E2BIG, f"xenstore payload of {len(payload)} bytes > {PAYLOAD_MAX}")
    return HEADER.pack(mtype, req_id & 0xFFFFFFFF, tx_id & 0xFFFFFFFF, len(payload)) + payload


class FrameReader:
    """Cuts a byte stream into whole messages (sans-IO: feed bytes, take messages)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[XsMessage]:
        self._buf += data
        out = []
        while len(self._buf) >= HEADER.size:
            mtype, req_id, tx_id, length = HEADER.unpack_from(self._buf)
            if length > PAYLOAD_MAX:
                raise WireError(f"xenstore message announces {length} payload bytes")
            if len(self._buf) < HEADER.size + length:
                break
            payload = bytes(self._buf[HEADER.size:HEADER.size + length])
            del self._buf[:HEADER.size + length]
            out.append(XsMessage(mtype, req_id, tx_id, payload))
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


_PATH_RE = re.compile(r"^[A-Za-z0-9\-/_@]+$")


def path_error(path: str, *, watch: bool = False) -> str | None:
    """Why `path` is not a valid xenstore node path (or watch path), or None if it is."""
    if watch and path.startswith("@"):
        return None if _PATH_RE.match(path) and len(path) <= REL_PATH_MAX else "bad special watch path"
    if not path or not _PATH_RE.match(path):
        return "path must be [A-Za-z0-9-/_@]+"
    if "//" in path or (len(path) > 1 and path.endswith("/")):
        return "path has '//' or a trailing '/'"
    if len(path) > (ABS_PATH_MAX if path.startswith("/") else REL_PATH_MAX):
        return "path too long"
    return None


def check_path(path: str, *, watch: bool = False) -> bytes:
    """Validate and encode a path; raises XenStoreError(EINVAL)."""
    why = path_error(path, watch=watch)
    if why:
        raise XenStoreError(errno.EINVAL, f"invalid xenstore path {path!r}: {why}")
    return path.encode("ascii")


def encode_value(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def decode_value(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def split_strings(payload: bytes) -> list[str]:
    """NUL-terminated strings of a reply ('a\\0b\\0' -> ['a', 'b']); empty payload -> []."""
    if not payload:
        return []
    parts = payload.split(b"\0")
    if parts[-1] == b"":
        parts.pop()
    return [decode_value(p) for p in parts]
