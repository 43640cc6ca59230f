"""Per-export policy in xen9pd's configuration: `[[export]]` tables matched against each new device.

    [[export]]
    domain = "web1"           # domain id (integer) or name; any of domain / tag / path may be left out
    tag = "share"             # the frontend's mount tag
    path = "/srv/iso"         # export path prefix (whole components: /srv/iso matches /srv/iso/a, not /srv/isox)
    readonly = true           # EROFS to every modifying request
    security_model = "none"   # replaces the toolstack's security_model
    max_open_files = 256      # defaults for the toolstack's limit keys (the toolstack's own value wins)
    max_space = 1024          # MiB
    max_files = 10000
    auto_delete = false

Every matching table applies, in file order, a later one overriding what an earlier one set; a table
with no match key matches every device. Read when a device is set up, so a SIGHUP reload reaches the
devices that appear after it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from xen9p_common.models import SECURITY_MODELS

_MATCH = ("domain", "tag", "path")
_LIMITS = {"max_open_files": (1, 1 << 20), "max_space": (0, 1 << 40), "max_files": (0, 1 << 31)}


@dataclass(frozen=True)
class ExportPolicy:
    domain: int | str | None = None
    tag: str | None = None
    path: str | None = None
    readonly: bool | None = None
    security_model: str | None = None
    max_open_files: int | None = None
    max_space: int | None = None
    max_files: int | None = None
    auto_delete: bool | None = None

    def matches(self, domid: int, domain_name: str, tag: str, path: str) -> bool:
        if self.domain is not None and self.domain not in (domid, domain_name):
            return False
        if self.tag is not None and self.tag != tag:
            return False
        if self.path is not None:
            pre = self.path.rstrip("/") or "/"
            if not (path == pre or path.startswith(pre if pre == "/" else pre + "/")):
                return False
        return True


@dataclass(frozen=True)
class Resolved:
    """What the matching tables set (None: not set by any)."""

    readonly: bool = False
    security_model: str | None = None
    max_open_files: int | None = None
    max_space: int | None = None
    max_files: int | None = None
    auto_delete: bool | None = None


_SETTINGS = [f.name for f in fields(Resolved)]


def resolve(policies: tuple[ExportPolicy, ...], domid: int, domain_name: str, tag: str, path: str) -> Resolved:
    got: dict[str, Any] = {}
    for p in policies:
        if p.matches(domid, domain_name, tag, path):
            got.update({k: getattr(p, k) for k in _SETTINGS if getattr(p, k) is not None})
    return Resolved(**got)


def parse(value: Any) -> tuple[ExportPolicy, ...]:
    """The `export` key: a list of tables (TOML [[export]]); ValueError naming the table and key."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError("want a list of tables ([[export]] in the file)")
    return tuple(_one(i, t) for i, t in enumerate(value))


def _one(i: int, t: Any) -> ExportPolicy:
    where = f"export table {i + 1}"
    if not isinstance(t, dict):
        raise ValueError(f"{where}: want a table")
    t = {str(k).replace("-", "_"): v for k, v in t.items()}
    known = {f.name for f in fields(ExportPolicy)}
    for k in t:
        if k not in known:
            raise ValueError(f"{where}: unknown key {k!r} (known: {', '.join(sorted(known))})")
    out: dict[str, Any] = {}
    if "domain" in t:
        d = t["domain"]
        if isinstance(d, bool) or not isinstance(d, (int, str)) or (isinstance(d, int) and not 0 < d < 0x7FF0) \
                or (isinstance(d, str) and not d.strip()):
            raise ValueError(f"{where}: domain must be a domain id (1..32751) or a name")
        out["domain"] = d.strip() if isinstance(d, str) else d
    for k in ("tag", "path"):
        if k in t:
            if not isinstance(t[k], str) or not t[k]:
                raise ValueError(f"{where}: {k} must be a non-empty string")
            out[k] = t[k]
    if "path" in out and not out["path"].startswith("/"):
        raise ValueError(f"{where}: path must be absolute")
    for k in ("readonly", "auto_delete"):
        if k in t:
            if not isinstance(t[k], bool):
                raise ValueError(f"{where}: {k} must be true or false")
            out[k] = t[k]
    if "security_model" in t:
        if t["security_model"] not in SECURITY_MODELS:
            raise ValueError(f"{where}: security_model must be one of {', '.join(SECURITY_MODELS)}")
        out["security_model"] = t["security_model"]
    for k, (lo, hi) in _LIMITS.items():
        if k in t:
            v = t[k]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{where}: {k} must be an integer in {lo}..{hi}")
            out[k] = v
    if not any(k in out for k in _SETTINGS):
        raise ValueError(f"{where}: sets nothing (readonly, security_model, or a limit)")
    return ExportPolicy(**out)
