"""The seam between xen9pd and the per-device shared state (xen9p_worker.shared.device_state).

The Device FSM only calls factory.create(...) and handle.close()/unlink(); which implementation runs is chosen in main().
"""
from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Protocol

from xen9p_common.errors import Xen9pError
from xen9p_common.procs import pid_alive
from xen9p_worker.shared.device_state import DeviceState

log = logging.getLogger("xen9pd")


@dataclass(frozen=True)
class DeviceLimits:
    """Per-device policy from the toolstack's keys (0 = unlimited where the key allows it)."""

    max_fids: int
    max_open_files: int
    max_space_mb: int = 0        # max-space, MiB
    max_files: int = 0           # max-files
    auto_delete: bool = False    # auto-delete
    readonly: bool = False       # xen9pd's [[export]] policy: EROFS to every modifying request


class StateHandle(Protocol):
    name: str

    def close(self) -> None: ...

    def unlink(self) -> None: ...


class DeviceStateFactory(Protocol):
    def create(self, name: str, *, limits: DeviceLimits, export: str, security_model: str, msize_cap: int,
               num_rings: int) -> StateHandle: ...


class NullState:
    """A device state that holds nothing (workers that keep their own state, fakes in tests)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def close(self) -> None:
        pass

    def unlink(self) -> None:
        pass


class NullStateFactory:
    def create(self, name: str, **_: Any) -> StateHandle:
        return NullState(name)

    def attach(self, name: str) -> StateHandle:
        return NullState(name)


class ShmStateFactory:
    """DeviceState.create(...) in shared memory (xen9p_worker.shared.device_state, which the workers attach)."""

    def create(self, name: str, *, limits: DeviceLimits, export: str, security_model: str, msize_cap: int,
               num_rings: int) -> StateHandle:
        try:
            return DeviceState.create(
                name, max_fids=limits.max_fids, max_open_files=limits.max_open_files,
                max_space_mb=limits.max_space_mb, export=export, security_model=security_model,
                msize_cap=msize_cap, num_rings=num_rings, max_files=limits.max_files,
                auto_delete=limits.auto_delete, readonly=limits.readonly)
        except (OSError, ValueError, Xen9pError) as e:
            raise Xen9pError(f"cannot create device state {name}: {e}") from e

    def attach(self, name: str) -> StateHandle:
        """An existing segment (a previous xen9pd's, being adopted)."""
        return DeviceState.attach(name)

    def layout_version(self, name: str) -> tuple[int | None, int]:
        """(the layout version segment `name` declares or None if it is no device state, the one we read)."""
        return DeviceState.layout_version(name), DeviceState.LAYOUT_VERSION


def make_factory(kind: str) -> DeviceStateFactory:
    """'none' -> no shared state (NullStateFactory); 'shm' or 'auto' -> the shared-memory DeviceState."""
    return NullStateFactory() if kind == "none" else ShmStateFactory()


# Device state segments are named xen9p-ds-<domid>-<devid>-<owner pid>-<seq>: the owner is the xen9pd that
# created or adopted it (adopt.py renames an adopted segment to carry the adopter's pid). Versions before
# adoption named them xen9p-<domid>-... and swept every such segment whose creator had died; the "ds-"
# keeps a daemon of such a version (a downgrade, or one running beside in tests) away from segments that
# now outlive their creator on purpose. Their old names are still recognised, to sweep their leftovers.
SEGMENT = re.compile(r"^xen9p-(?:ds-)?(\d+)-(\d+)-(\d+)-\d+$")
_seq = itertools.count(1)


def segment_name(domid: int, devid: int, owner: int | None = None, seq: int | str | None = None) -> str:
    """A fresh segment name owned by this process (or, with owner and seq, e.g. seq="*", a pattern)."""
    return f"xen9p-ds-{domid}-{devid}-{os.getpid() if owner is None else owner}-{next(_seq) if seq is None else seq}"


def mapped_segments(shm_dir: str = "/dev/shm", proc: str = "/proc") -> set[str]:
    """Names of device state segments some live process has mapped (a map follows the segment's renames)."""
    prefix = shm_dir.rstrip("/") + "/xen9p-"
    out: set[str] = set()
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            with open(f"{proc}/{pid}/maps", "rb") as f:
                for line in f:
                    i = line.find(prefix.encode())
                    if i >= 0:
                        out.add(os.fsdecode(line[i + len(shm_dir.rstrip("/")) + 1:].split()[0]))
        except OSError:
            continue
    return out


def segments_of(pid: int, shm_dir: str = "/dev/shm") -> set[str]:
    """The device state segments owned by xen9pd `pid`."""
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return set()
    return {n for n in names if (mt := SEGMENT.match(n)) is not None and int(mt.group(3)) == pid}


def sweep_stale_segments(shm_dir: str = "/dev/shm") -> list[str]:
    """Unlink device state segments whose owning xen9pd is dead and which no device of ours adopted.

    A live owner's segments are never touched (another daemon, e.g. in tests, may be serving them); an
    adopted segment carries our pid. Run it after the first rescan, when adoption is done.
    """
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return []
    stale = [n for n in names if (mt := SEGMENT.match(n)) is not None and not pid_alive(int(mt.group(3)))]
    mapped = mapped_segments(shm_dir) if stale else set()
    gone = []
    for name in stale:
        if name in mapped:  # a live worker still serves it (another xen9pd's, e.g. in tests, may adopt it)
            continue
        try:
            os.unlink(os.path.join(shm_dir, name))
            gone.append(name)
        except OSError:
            pass
    return gone


