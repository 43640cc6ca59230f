"""One request's view of the simulated xenstore: who asks, in which transaction, and what they may do.

Permission-checked lookup/write/rm over the store (or a transaction overlay), quotas, queued watch events.
"""
from __future__ import annotations

import errno
from dataclasses import replace

from xen9p_common.platform.xsproto import path_error
from xen9p_sim.xenstore.store import WRITE, Node, Perms, Tx, XsFail, basename, parent_of, perm_bits


class Ctx:
    """Who is asking (domain, privilege, transaction) and the events to send after the reply.

    `server` supplies store, quotas, domains and fire(); `conn` is None for the server itself (dom0).
    """

    def __init__(self, server, conn, tx: Tx | None = None) -> None:
        self.server = server
        self.conn = conn
        self.domid = conn.domid if conn else 0
        self.privileged = conn.privileged if conn else True
        dom = server.domains.get(self.domid)
        self.target = dom.target if dom else None
        self.tx = tx
        self.after: list[tuple[object, bytes]] = []

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

    # -- node operations (server lock held) -------------------------------------

    def view(self):
        return self.tx if self.tx is not None else self.server.store

    def can(self, node: Node, want: int) -> bool:
        return perm_bits(node.perms, self.domid, self.privileged, self.target) & want == want

    def lookup(self, path: str, want: int) -> Node:
        """The node if it exists and we may `want` it; else ENOENT, or EACCES where ENOENT would leak."""
        view = self.view()
        node = view.get(path)
        if node is not None:
            if not self.can(node, want):
                raise XsFail(errno.EACCES)
            return node
        # Like xenstored: ENOENT only if the nearest existing ancestor grants the same access.
        p = path
        while p != "/":
            p = parent_of(p)
            anc = view.get(p)
            if anc is not None:
                raise XsFail(errno.ENOENT if self.can(anc, want) else errno.EACCES)
        raise XsFail(errno.ENOENT)

    def write(self, path: str, value: bytes, *, only_create: bool = False) -> None:
        view = self.view()
        if not self.privileged and len(value) > self.server.quotas.max_entry_size:
            raise XsFail(errno.ENOSPC)
        try:
            node = self.lookup(path, WRITE)
        except XsFail as e:
            if e.errno != errno.ENOENT:
                raise
            node = None
        if node is not None:
            if not only_create:
                view.put(path, replace(node, value=value))
                self.fire(path, False, node.perms)
            return
        perms = self._create(view, path, value)
        # One event for the written node covers its implicit parents: every watch on one of them matches it.
        self.fire(path, False, perms)

    def _create(self, view, path: str, value: bytes) -> Perms:
        """Create path and missing parents; children inherit the parent's perms, owned by the creator."""
        parent_path = parent_of(path)
        parent = view.get(parent_path)
        if parent is None:
            self._create(view, parent_path, b"")
            parent = view.get(parent_path)
        elif not self.can(parent, WRITE):
            raise XsFail(errno.EACCES)
        perms = parent.perms
        if not self.privileged:
            perms = ((perms[0][0], self.domid),) + perms[1:]
            if self.server.store.owned.get(self.domid, 0) >= self.server.quotas.max_nodes:
                raise XsFail(errno.ENOSPC)
        view.put(path, Node(value, perms, (), 0))
        view.put(parent_path, replace(parent, children=parent.children + (basename(path),)))
        return perms

    def rm(self, path: str) -> None:
        view = self.view()
        if path == "/":
            raise XsFail(errno.EINVAL)
        try:
            node = self.lookup(path, WRITE)
        except XsFail as e:
            # Removing a missing node is fine as long as its parent exists.
            if e.errno == errno.ENOENT and view.get(parent_of(path)) is not None:
                return
            raise
        parent_path = parent_of(path)
        parent = view.get(parent_path)
        name = basename(path)
        view.put(parent_path, replace(parent, children=tuple(c for c in parent.children if c != name)))
        _rm_tree(view, path, node)
        self.fire(path, True, node.perms)


def _rm_tree(view, path: str, node: Node) -> None:
    for child in node.children:
        cpath = path.rstrip("/") + "/" + child
        cnode = view.get(cpath)
        if cnode is not None:
            _rm_tree(view, cpath, cnode)
    view.put(path, None)
