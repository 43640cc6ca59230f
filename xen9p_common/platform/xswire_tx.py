"""Xenstore requests that work with or without a transaction (tx_id 0), and the Transaction bound to one.

Shared by XsWireClient and its transactions, which differ only in tx_id; `c` is anything with request().
"""
from __future__ import annotations

import errno
from typing import Sequence

from ..errors import XenStoreError
from . import Perm, Transaction
from .xsproto import XsType, check_path, decode_value, encode_value, split_strings


def xs_read(c, path: str, tx_id: int) -> str | None:
    try:
        return decode_value(c.request(XsType.READ, check_path(path) + b"\0", tx_id))
    except XenStoreError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def xs_write(c, path: str, value: str, tx_id: int) -> None:
    c.request(XsType.WRITE, check_path(path) + b"\0" + encode_value(value), tx_id)


def xs_mkdir(c, path: str, tx_id: int) -> None:
    c.request(XsType.MKDIR, check_path(path) + b"\0", tx_id)


def xs_rm(c, path: str, tx_id: int) -> None:
    c.request(XsType.RM, check_path(path) + b"\0", tx_id)


def xs_list(c, path: str, tx_id: int) -> list[str]:
    p = check_path(path) + b"\0"
    try:
        return split_strings(c.request(XsType.DIRECTORY, p, tx_id))
    except XenStoreError as e:
        if e.errno != errno.E2BIG:
            raise
    # Too many children for one reply: page through DIRECTORY_PART, restarting if the node changes.
    for _ in range(16):
        names: list[bytes] = []
        offset, gen = 0, None
        while True:
            reply = c.request(XsType.DIRECTORY_PART, p + b"%d\0" % offset, tx_id)
            g, _, rest = reply.partition(b"\0")
            if gen is not None and g != gen:
                break
            gen = g
            done = rest.endswith(b"\0\0") or rest in (b"", b"\0")
            chunk = rest[:-1] if done and rest else rest
            parts = [x for x in chunk.split(b"\0") if x]
            names.extend(parts)
            offset += sum(len(x) + 1 for x in parts)
            if done:
                return [decode_value(n) for n in names]
    raise XenStoreError(errno.EAGAIN, f"children of {path} kept changing")


def xs_get_perms(c, path: str, tx_id: int) -> list[Perm]:
    return [Perm.parse(s) for s in split_strings(c.request(XsType.GET_PERMS, check_path(path) + b"\0", tx_id))]


def xs_set_perms(c, path: str, perms: Sequence[Perm], tx_id: int) -> None:
    if not perms:
        raise XenStoreError(errno.EINVAL, "a permission list needs at least the owner entry")
    payload = check_path(path) + b"\0" + b"".join(p.wire().encode() + b"\0" for p in perms)
    c.request(XsType.SET_PERMS, payload, tx_id)


class WireTransaction(Transaction):
    def __init__(self, client, tx_id: int) -> None:
        self.client = client
        self.tx_id = tx_id

    def read(self, path: str) -> str | None:
        return xs_read(self.client, path, self.tx_id)

    def write(self, path: str, value: str) -> None:
        xs_write(self.client, path, value, self.tx_id)

    def mkdir(self, path: str) -> None:
        xs_mkdir(self.client, path, self.tx_id)

    def rm(self, path: str) -> None:
        xs_rm(self.client, path, self.tx_id)

    def list(self, path: str) -> list[str]:
        return xs_list(self.client, path, self.tx_id)

    def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        xs_set_perms(self.client, path, perms, self.tx_id)
