"""Watch matching for the simulated xenstored: which connections get a WATCH_EVENT for a change.

A watch covers its path and everything below; rm also fires watches below the removed node.
"""
from __future__ import annotations

from dataclasses import dataclass

from xen9p_common.platform.xsproto import XsType, pack_message
from xen9p_sim.xenstore.store import READ, Perms, is_under, perm_bits


@dataclass
class Watch:
    path: str        # absolute, or @special
    token: bytes
    relative: str    # the domain path prefix to strip from events, or "" for absolute watches


def watch_events(conns, domains: dict, path: str, removed: bool, perms: Perms, after: list,
                 special: bool = False) -> None:
    """Append (conn, WATCH_EVENT frame) to `after` for every watch on path or a parent (or below, for rm).

    Only connections that may read the node get the event; @special watches match by name only.
    """
    for c in list(conns):
        if not special:
            dom = domains.get(c.domid)
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
            after.append((c, watch_event(ev.encode(), w.token)))


def watch_event(path: bytes, token: bytes) -> bytes:
    """A WATCH_EVENT frame: payload `path\\0token\\0`, req_id and tx_id 0."""
    return pack_message(XsType.WATCH_EVENT, 0, 0, path + b"\0" + token + b"\0")
