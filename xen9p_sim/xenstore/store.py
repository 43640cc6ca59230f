"""The simulated xenstored's node tree: nodes, permissions, generations and transaction overlays.

Pure data under the server lock; no sockets, no requester identity (that is xs_access).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, replace

Perms = tuple[tuple[str, int], ...]   # (kind, domid); the first entry is owner + default
READ, WRITE = 1, 2
KIND_BITS = {"n": 0, "r": READ, "w": WRITE, "b": READ | WRITE}


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
            return KIND_BITS[kind]
    return KIND_BITS[perms[0][0]]


def parent_of(path: str) -> str:
    i = path.rstrip("/").rfind("/")
    return "/" if i <= 0 else path[:i]


def basename(path: str) -> str:
    return path[path.rfind("/") + 1:]


def is_under(path: str, top: str) -> bool:
    """path is top or below it: /a covers /a and /a/b, not /ab."""
    return path == top or top == "/" or path.startswith(top + "/")


class Tx:
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

    def commit(self, tx: Tx) -> None:
        for path, gen in tx.seen.items():
            node = self.nodes.get(path)
            if (node.gen if node else None) != gen:
                raise XsFail(errno.EAGAIN)
        for path, node in tx.overlay.items():
            if path in tx.seen and node is not self.nodes.get(path):
                self.put(path, node)
