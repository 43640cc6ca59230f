"""The only place that touches Xen: three narrow interfaces, two implementations.

`xen` talks to a real hypervisor (pyxs / xenbus, /dev/xen/gntdev, /dev/xen/evtchn);
`sim` is the embedded simulated Xen. Nothing above this package knows which one runs.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0  # seconds; every xenstore wait is bounded


@dataclass(frozen=True)
class WatchEvent:
    path: str
    token: str


@dataclass(frozen=True)
class Perm:
    """One xenstore permission entry: kind is 'n' none, 'r' read, 'w' write, 'b' both."""

    kind: str
    domid: int

    def wire(self) -> str:
        return f"{self.kind}{self.domid}"

    @classmethod
    def parse(cls, s: str) -> "Perm":
        if len(s) < 2 or s[0] not in "nrwb" or not s[1:].isdigit():
            raise ValueError(f"bad xenstore permission {s!r}")
        return cls(s[0], int(s[1:]))


class NodeAccess(abc.ABC):
    """The node calls of a xenstore connection and of a transaction on it.

    read() returns None for a missing node; other failures raise XenStoreError.
    """

    @abc.abstractmethod
    def read(self, path: str) -> str | None: ...

    @abc.abstractmethod
    def write(self, path: str, value: str) -> None: ...

    @abc.abstractmethod
    def mkdir(self, path: str) -> None: ...

    @abc.abstractmethod
    def rm(self, path: str) -> None: ...

    @abc.abstractmethod
    def list(self, path: str) -> list[str]:
        """Children of path; [] if it has none; XenStoreError(ENOENT) if missing."""

    @abc.abstractmethod
    def set_perms(self, path: str, perms: Sequence[Perm]) -> None: ...


class Transaction(NodeAccess):
    """The same node calls as XenStore, inside one transaction."""


class XenStore(NodeAccess):
    """A connection to xenstored. Every call that waits takes or uses a timeout."""

    @abc.abstractmethod
    def get_perms(self, path: str) -> list[Perm]: ...

    @abc.abstractmethod
    def transaction(self, fn: Callable[[Transaction], T], retries: int = 16) -> T:
        """Run fn inside a transaction, retrying the whole of fn on EAGAIN."""

    @abc.abstractmethod
    def watch(self, path: str, token: str) -> None:
        """Add a watch; the initial event is delivered through wait_event()."""

    @abc.abstractmethod
    def unwatch(self, path: str, token: str) -> None: ...

    @abc.abstractmethod
    def wait_event(self, timeout: float) -> WatchEvent | None:
        """Next watch event, or None after timeout seconds."""

    @abc.abstractmethod
    def event_fd(self) -> int:
        """A fd that polls readable while watch events are queued (for event loops)."""

    @abc.abstractmethod
    def close(self) -> None: ...


class GrantMapping(abc.ABC):
    """Grant refs of one domain mapped into one contiguous writable buffer."""

    buf: memoryview

    @abc.abstractmethod
    def unmap(self) -> None: ...


class GrantMapper(abc.ABC):
    @abc.abstractmethod
    def map(self, domid: int, refs: Sequence[int], writable: bool = True) -> GrantMapping: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class EventChannels(abc.ABC):
    """One handle (like one open of /dev/xen/evtchn): bound ports share fileno()."""

    @abc.abstractmethod
    def bind_interdomain(self, remote_domid: int, remote_port: int) -> int:
        """Bind to a remote unbound port; returns the local port."""

    @abc.abstractmethod
    def fileno(self) -> int:
        """Readable when some bound port fired."""

    @abc.abstractmethod
    def pending(self) -> list[int]:
        """Fired ports (non-blocking; [] if none). Each stays masked until unmask()."""

    @abc.abstractmethod
    def unmask(self, port: int) -> None: ...

    @abc.abstractmethod
    def notify(self, port: int) -> None: ...

    @abc.abstractmethod
    def unbind(self, port: int) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


@dataclass
class Platform:
    """What a process needs from Xen, composed in main()."""

    name: str
    xenstore: Callable[[], XenStore]
    grants: Callable[[], GrantMapper]
    evtchn: Callable[[], EventChannels]
    self_domid: int = 0


def open_platform(name: str, sim_dir: str | None = None) -> Platform:
    """Build the platform named on the command line ('xen' or 'sim')."""
    if name == "xen":
        from .xen import make_platform
        return make_platform()
    if name == "sim":
        from .sim import make_platform
        if not sim_dir:
            raise ValueError("--platform sim needs a sim directory (--sim-dir or XEN9P_SIM_DIR)")
        return make_platform(sim_dir)
    raise ValueError(f"unknown platform {name!r} (expected 'xen' or 'sim')")
