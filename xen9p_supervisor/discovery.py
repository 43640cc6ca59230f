"""Finds 9pfs devices in xenstore: watches for prompt reaction plus periodic mark-and-sweep rescans.

Watch events are only hints (they coalesce, repeat, or go missing): each one makes us re-read the device it
names, and every rescan re-reads everything, creating devices that appeared and releasing those that vanished.
"""
from __future__ import annotations

import errno
import logging
from typing import Callable, Iterable

from xen9p_common.errors import XenStoreError
from xen9p_common.platform import XenStore
from xen9p_common.xenbus import Event

from .device import Device
from .toolstack import backend_root, domain_path, frontend_path

log = logging.getLogger("xen9pd")

Key = tuple[str, int, int]  # (kind, domid, devid)
_TOK_BACKEND = "xen9pd:backend:"
_TOK_FRONTEND = "xen9pd:frontend:"
_TOK_RELEASE = "xen9pd:release"


def _decimal(s: str) -> int | None:
    return int(s) if s.isascii() and s.isdigit() and len(s) <= 5 else None


def domain_alive(xs: XenStore, domid: int) -> bool:
    """Is the domain still known to xenstored? (XS_IS_DOMAIN_INTRODUCED, else its /local/domain dir.)"""
    probe = getattr(xs, "is_domain_introduced", None)
    if probe is not None:
        return bool(probe(domid))
    return xs.read(domain_path(domid)) is not None


class Discovery:
    """Owns the device table: devices[(kind, domid, devid)]."""

    def __init__(self, xs: XenStore, self_domid: int, kinds: Iterable[str],
                 make_device: Callable[[str, int, int], Device]) -> None:
        self.xs = xs
        self.self_domid = self_domid
        self.kinds = tuple(kinds)
        self.make_device = make_device
        self.devices: dict[Key, Device] = {}
        self._seen_alive: set[int] = set()
        # Domids torn down on @releaseDomain whose backend nodes may linger (nothing removed them):
        # a rescan must not adopt those again as new devices while the domain stays dead.
        self._released: set[int] = set()
        self._fe_watched: set[Key] = set()
        self.rescans = 0

    def kind_root(self, kind: str) -> str:
        return backend_root(self.self_domid, kind)

    def start(self) -> None:
        for kind in self.kinds:
            self.xs.watch(self.kind_root(kind), _TOK_BACKEND + kind)
        self.xs.watch("@releaseDomain", _TOK_RELEASE)

    def stop(self) -> None:
        for kind in self.kinds:
            self._quiet_unwatch(self.kind_root(kind), _TOK_BACKEND + kind)
        self._quiet_unwatch("@releaseDomain", _TOK_RELEASE)
        for key in list(self._fe_watched):
            self._unwatch_frontend(key)

    def set_kinds(self, kinds: Iterable[str]) -> None:
        """Reload: start/stop watching kinds; devices of dropped kinds are left to the caller."""
        new = tuple(kinds)
        for k in set(new) - set(self.kinds):
            self.xs.watch(self.kind_root(k), _TOK_BACKEND + k)
        for k in set(self.kinds) - set(new):
            self._quiet_unwatch(self.kind_root(k), _TOK_BACKEND + k)
        self.kinds = new

    def _quiet_unwatch(self, path: str, token: str) -> None:
        try:
            self.xs.unwatch(path, token)
        except XenStoreError:
            pass

    # -- events --------------------------------------------------------------

    def handle_events(self) -> bool:
        """Drain queued watch events; reconcile what they name. Returns True if a full rescan is needed."""
        touched: set[Key] = set()
        rescan = released = False
        while True:
            ev = self.xs.wait_event(0)
            if ev is None:
                break
            if ev.token == _TOK_RELEASE:
                released = True
            elif ev.token.startswith(_TOK_FRONTEND):
                key = self._key_from_token(ev.token)
                if key is not None:
                    touched.add(key)
            elif ev.token.startswith(_TOK_BACKEND):
                key = self._key_from_backend_path(ev.path)
                if key is None or key not in self.devices:
                    rescan = True  # a kind root or a new domid/devid dir: let the sweep sort it out
                else:
                    touched.add(key)
        if released:
            self.check_domains()
        for key in touched:
            dev = self.devices.get(key)
            if dev is not None:
                dev.reconcile()
        self.sweep_forgotten()
        return rescan

    def _key_from_token(self, token: str) -> Key | None:
        parts = token[len(_TOK_FRONTEND):].split(":")
        if len(parts) != 3:
            return None
        domid, devid = _decimal(parts[1]), _decimal(parts[2])
        return None if domid is None or devid is None else (parts[0], domid, devid)

    def _key_from_backend_path(self, path: str) -> Key | None:
        for kind in self.kinds:
            root = self.kind_root(kind) + "/"
            if path.startswith(root):
                parts = path[len(root):].split("/")
                if len(parts) >= 2:
                    domid, devid = _decimal(parts[0]), _decimal(parts[1])
                    if domid is not None and devid is not None:
                        return (kind, domid, devid)
        return None

    # -- mark and sweep --------------------------------------------------------------

    def rescan(self) -> None:
        """Read every backend dir of every served kind; create new devices, reconcile all, drop vanished."""
        self.rescans += 1
        found: set[Key] = set()
        for kind in self.kinds:
            for domid in self._children(self.kind_root(kind)):
                for devid in self._children(f"{self.kind_root(kind)}/{domid}"):
                    found.add((kind, domid, devid))
        gone = {d for d in {k[1] for k in found} if self._remove_leftovers(d)}
        found = {k for k in found if k[1] not in gone}
        for key in sorted(found):
            dev = self.devices.get(key)
            if dev is None:
                if self._still_released(key[1]):
                    continue
                dev = self.make_device(*key)
                self.devices[key] = dev
                self._watch_frontend(key, dev)
                log.info("%s: found %s backend", dev.name, key[0])
            try:
                dev.reconcile()
            except XenStoreError as e:
                log.warning("%s: reconcile failed: %s", dev.name, e)
        for key, dev in list(self.devices.items()):
            if key not in found:
                dev.feed(Event.BACKEND_GONE)
        self._released &= {k[1] for k in found}  # its nodes are gone: nothing left to ignore
        self.check_domains()
        self.sweep_forgotten()

    def _children(self, path: str) -> list[int]:
        try:
            names = self.xs.list(path)
        except XenStoreError as e:
            if e.errno in (errno.ENOENT, errno.EACCES):
                return []  # missing or unreadable: nothing to serve there
            raise  # a lost or slow xenstored proves nothing: the rescan is abandoned, nothing swept
        return [n for n in (_decimal(x) for x in names) if n is not None]

    def check_domains(self) -> None:
        """@releaseDomain (or a rescan): tear down devices of domains that died since we saw them alive."""
        for domid in sorted({k[1] for k in self.devices}):
            try:
                alive = domain_alive(self.xs, domid)
            except XenStoreError:
                continue
            if alive:
                self._seen_alive.add(domid)
            elif domid in self._seen_alive:
                # A domain we never saw alive may simply not be introduced yet (or ever, in tests).
                self._seen_alive.discard(domid)
                self._released.add(domid)
                log.info("dom%d: domain released; tearing down its devices", domid)
                for key, dev in list(self.devices.items()):
                    if key[1] == domid:
                        dev.feed(Event.DOMAIN_RELEASED)

    def _still_released(self, domid: int) -> bool:
        """Was domid released, and is it still not introduced again (domids get reused)?"""
        if domid not in self._released:
            return False
        try:
            alive = domain_alive(self.xs, domid)
        except XenStoreError:
            return True
        if alive:
            self._released.discard(domid)
        return not alive

    def _watch_frontend(self, key: Key, dev: Device) -> None:
        try:
            self.xs.watch(dev.fe + "/state", _TOK_FRONTEND + "%s:%d:%d" % key)
            self._fe_watched.add(key)
        except XenStoreError as e:
            log.warning("%s: cannot watch the frontend: %s", dev.name, e)

    def _unwatch_frontend(self, key: Key) -> None:
        self._fe_watched.discard(key)
        self._quiet_unwatch(frontend_path(key[1], key[2]) + "/state", _TOK_FRONTEND + "%s:%d:%d" % key)

    def sweep_forgotten(self) -> None:
        dropped = set()
        for key, dev in list(self.devices.items()):
            if dev.forgotten:
                del self.devices[key]
                self._unwatch_frontend(key)
                dropped.add(key[1])
        for domid in sorted(dropped & self._released):
            self._remove_leftovers(domid)

    def _remove_leftovers(self, domid: int) -> bool:
        """Remove our kinds' backend dirs of a domain that no longer exists; True if removed.

        libxl removes /local/domain/<domid> when it destroys a domain, but not the backend dirs of
        a kind it does not know (xen_9pfs, written by `xen9pctl attach`): left there, a later
        xen9pd would adopt them as devices. A domain still introduced, or whose /local/domain dir
        is there (being built, or a toolstack that keeps it), is left alone, and so is a dir that
        one of our live devices still serves.
        """
        if any(k[1] == domid for k in self.devices):
            return False
        try:
            if domain_alive(self.xs, domid) or self.xs.read(domain_path(domid)) is not None:
                return False
        except XenStoreError:
            return False
        removed = False
        for kind in self.kinds:
            path = f"{self.kind_root(kind)}/{domid}"
            try:
                if self.xs.read(path) is None:
                    continue
                self.xs.rm(path)
            except XenStoreError as e:
                log.warning("dom%d: cannot remove %s left by the dead domain: %s", domid, path, e)
                continue
            removed = True
            log.info("dom%d: domain gone; removed its leftover backend dir %s", domid, path)
        if removed:
            self._released.discard(domid)
        return removed
