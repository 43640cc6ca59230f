"""xen9pd configuration: one declared table of options, read from CLI > environment > file > defaults.

Validated once into a frozen Config; a bad value raises ConfigError naming the key and where it came from.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

from xen9p_common.control import DEFAULT_CONTROL, DEFAULT_METRICS, DEFAULT_WORKERS
from xen9p_common.errors import ConfigError
from xen9p_common.p9.messages import MSIZE_CAP

from . import policy

ENV_PREFIX = "XEN9PD_"
DEFAULT_CONFIG_FILE = "/etc/xen9p/xen9pd.toml"
KINDS = ("9pfs", "xen_9pfs")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEVICE_STATE_KINDS = ("auto", "shm", "none")


def parse_cpus(text: str) -> tuple[int, ...]:
    """'0-3,6' -> (0, 1, 2, 3, 6); '' -> () meaning every CPU we may run on."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad CPU list element {part!r} (want N or N-M)")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"bad CPU range {part!r}")
        out.extend(range(a, b + 1))
    return tuple(dict.fromkeys(out))


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError("want an integer")
        n = v if isinstance(v, int) else int(str(v).strip(), 10)
        if not lo <= n <= hi:
            raise ValueError(f"want an integer in {lo}..{hi}")
        return n
    return conv


def _float(lo: float, hi: float) -> Callable[[Any], float]:
    def conv(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError("want a number")
        x = float(v)
        if not lo <= x <= hi:
            raise ValueError(f"want a number in {lo}..{hi}")
        return x
    return conv


def _choice(*allowed: str) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        s = str(v).strip().lower()
        if s not in allowed:
            raise ValueError(f"want one of {', '.join(allowed)}")
        return s
    return conv


def _kinds(v: Any) -> tuple[str, ...]:
    items = v if isinstance(v, (list, tuple)) else str(v).replace(",", " ").split()
    kinds = tuple(dict.fromkeys(str(k).strip() for k in items))
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"want a non-empty list of {', '.join(KINDS)}")
    return kinds


def _cpus(v: Any) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        v = ",".join(str(x) for x in v)
    cpus = parse_cpus(str(v))
    if cpus:
        usable = os.sched_getaffinity(0)
        bad = [c for c in cpus if c not in usable]
        if bad:
            raise ValueError(f"CPUs {bad} are not usable here (usable: {sorted(usable)})")
    return cpus


def _cmd(v: Any) -> tuple[str, ...]:
    argv = tuple(str(x) for x in v) if isinstance(v, (list, tuple)) else tuple(shlex.split(str(v)))
    if not argv:
        raise ValueError("want a command")
    return argv


def _str(v: Any) -> str:
    return str(v)


def _opt_str(v: Any) -> str | None:
    s = str(v).strip()
    return s or None


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError("want true or false")


def _exports(v: Any) -> tuple:
    if isinstance(v, str):  # environment or command line: the list of tables as JSON
        import json
        try:
            v = json.loads(v) if v.strip() else []
        except json.JSONDecodeError as e:
            raise ValueError(f"want a JSON list of tables here: {e}") from None
    return policy.parse(v)


def _endpoint(v: Any) -> str:
    s = str(v).strip()
    if "://" not in s:
        raise ValueError("want a zmq endpoint such as ipc:///run/xen9p/control.sock or tcp://127.0.0.1:5555")
    return s


def _prometheus(v: Any) -> str | None:
    s = str(v).strip()
    if not s or s in ("0", "off", "none"):
        return None
    host, _, port = s.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("want PORT or HOST:PORT")
    return s


@dataclass(frozen=True)
class Option:
    name: str
    conv: Callable[[Any], Any]
    default: Any
    help: str


def _opt(conv: Callable[[Any], Any], default: Any, help: str) -> Any:
    """One option: a Config field whose metadata carries its converter (the validation) and help."""
    return field(default=default, metadata={"conv": conv, "help": help})


@dataclass(frozen=True)
class Config:
    """Every option, declared once (name, type, converter, default, help); OPTIONS is derived from it."""

    platform: str = _opt(_choice("xen", "sim"), "xen", "which Xen to talk to")
    sim_dir: str | None = _opt(_opt_str, None, "directory of the simulated Xen (platform sim)")
    kinds: tuple[str, ...] = _opt(_kinds, KINDS, "backend kinds to serve (9pfs = QEMU's, xen_9pfs = xen-9pfsd's)")
    max_rings: int = _opt(_int(1, 64), 8, "max-rings advertised to frontends")
    max_ring_order: int = _opt(_int(1, 9), 9, "max-ring-page-order advertised to frontends")
    msize_cap: int = _opt(_int(4096, 16 << 20), MSIZE_CAP, "largest 9P msize granted")
    cpus: tuple[int, ...] = _opt(_cpus, (), "CPUs for ring workers, round-robin (e.g. 2-7); empty = all usable")
    control: str = _opt(_endpoint, DEFAULT_CONTROL, "control ROUTER endpoint")
    metrics: str = _opt(_endpoint, DEFAULT_METRICS, "metrics PUB endpoint")
    workers: str = _opt(_endpoint, DEFAULT_WORKERS, "endpoint the ring workers connect to")
    prometheus: str | None = _opt(_prometheus, None, "serve Prometheus metrics on [HOST:]PORT")
    log_level: str = _opt(_choice(*LOG_LEVELS), "info", "log level")
    worker_cmd: tuple[str, ...] = _opt(_cmd, (sys.executable, "-m", "xen9p_worker"),
                                       "command that runs one ring worker")
    device_state: str = _opt(_choice(*DEVICE_STATE_KINDS), "auto",
                             "shared device state: shm (auto is the same) or none")
    max_fids: int = _opt(_int(16, 1 << 24), 16384, "fids per device")
    max_open_files: int = _opt(_int(1, 1 << 20), 1024, "open files per device unless the toolstack says")
    worker_spin_us: float = _opt(_float(0.0, 10000.0), 30.0, "µs a ring worker polls its ring after a busy pass "
                                 "before sleeping (0 on dom0s short of vCPUs)")
    heartbeat_timeout: float = _opt(_float(0.1, 3600), 10.0, "seconds of worker silence before SIGABRT")
    ready_timeout: float = _opt(_float(0.1, 3600), 10.0, "seconds for a worker to map and bind its ring")
    kill_grace: float = _opt(_float(0.05, 600), 2.0, "seconds between SIGABRT/SIGTERM and SIGKILL")
    startsecs: float = _opt(_float(0.0, 3600), 2.0, "a worker that dies sooner failed to start")
    startretries: int = _opt(_int(0, 1000), 3, "quick failures in a row before FATAL")
    backoff_initial: float = _opt(_float(0.0, 3600), 0.5, "first restart delay (doubles per failure)")
    backoff_max: float = _opt(_float(0.0, 3600), 30.0, "largest restart delay")
    rescan_interval: float = _opt(_float(0.05, 3600), 5.0, "seconds between full xenstore rescans")
    close_timeout: float = _opt(_float(0.1, 3600), 10.0, "seconds to wait for a frontend to reach Closed")
    metrics_interval: float = _opt(_float(0.05, 3600), 1.0, "seconds between metrics publications")
    hold_libxl_node: bool = _opt(_bool, True, "hold libxl's xen-9pfs/state node when serving xen_9pfs")
    on_sigterm: str = _opt(_choice("auto", "close", "keep-serving"), "auto",
                           "SIGTERM closes every device (close) or exits leaving the workers serving for the next "
                           "xen9pd (keep-serving); auto = keep serving when systemd is restarting the unit, else close")
    export: tuple = _opt(_exports, (), "per-export policy: [[export]] tables (see policy.py; JSON list elsewhere)")
    config_file: str | None = field(default=None, compare=False)
    sources: dict = field(default_factory=dict, compare=False, repr=False)  # key -> where it came from

    def usable_cpus(self) -> tuple[int, ...]:
        return self.cpus or tuple(sorted(os.sched_getaffinity(0)))


OPTIONS: tuple[Option, ...] = tuple(Option(f.name, f.metadata["conv"], f.default, f.metadata["help"])
                                    for f in fields(Config) if "conv" in f.metadata)
_BY_NAME = {o.name: o for o in OPTIONS}


def read_file(path: str) -> dict:
    """A TOML file's keys (top level or under [xen9pd]); dashes in keys are accepted."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None
    section = data.pop("xen9pd", {})
    if not isinstance(section, dict):
        raise ConfigError("config", f"{path}: [xen9pd] must be a table")
    data.update(section)
    return {k.replace("-", "_"): v for k, v in data.items()}


def env_values(env: Mapping[str, str]) -> dict:
    out = {}
    for o in OPTIONS:
        v = env.get(ENV_PREFIX + o.name.upper())
        if v is not None:
            out[o.name] = v
    return out


def build(cli: Mapping[str, Any], env: Mapping[str, str], file_values: Mapping[str, Any] | None = None,
          file_path: str | None = None) -> Config:
    """Merge the layers (CLI > environment > file > defaults) and validate every key once."""
    layers = [("command line", {k: v for k, v in cli.items() if v is not None}),
              ("environment", env_values(env)),
              (f"file {file_path}", dict(file_values or {}))]
    for where, values in layers:
        for k in values:
            if k not in _BY_NAME:
                raise ConfigError(k, f"unknown configuration key (in {where})")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for o in OPTIONS:
        for where, layer in layers:
            if o.name in layer:
                raw = layer[o.name]
                try:
                    values[o.name] = o.conv(raw)
                except (ValueError, TypeError) as e:
                    raise ConfigError(o.name, f"{raw!r} is invalid: {e} (from {where})") from None
                sources[o.name] = where
                break
        else:
            values[o.name] = o.default
            sources[o.name] = "default"
    cfg = Config(**values, config_file=file_path, sources=sources)
    _check_together(cfg)
    return cfg


def _check_together(cfg: Config) -> None:
    if cfg.platform == "sim" and not cfg.sim_dir:
        raise ConfigError("sim_dir", "platform sim needs sim_dir (--sim-dir or XEN9PD_SIM_DIR)")
    if cfg.backoff_max < cfg.backoff_initial:
        raise ConfigError("backoff_max", "must be >= backoff_initial")
    ends = {"control": cfg.control, "metrics": cfg.metrics, "workers": cfg.workers}
    if len(set(ends.values())) != 3:
        raise ConfigError("control", "control, metrics and workers endpoints must differ")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """One --option per key (dashes), all defaulting to None so unset means 'not on the CLI'."""
    ap.add_argument("--config", metavar="FILE",
                    help=f"TOML configuration file (default {DEFAULT_CONFIG_FILE} if present; env {ENV_PREFIX}CONFIG)")
    for o in OPTIONS:
        ap.add_argument("--" + o.name.replace("_", "-"), dest=o.name, default=None, metavar="VALUE",
                        help=f"{o.help} (default {_show(o.default)})")


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return " ".join(str(x) for x in v) or "''"
    return repr(v) if v is None or v == "" else str(v)


def load(ns: argparse.Namespace | Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Config from parsed arguments + environment + the config file they name."""
    env = os.environ if env is None else env
    cli = dict(vars(ns)) if isinstance(ns, argparse.Namespace) else dict(ns)
    cli = {k: v for k, v in cli.items() if k in _BY_NAME}
    path = (ns.config if isinstance(ns, argparse.Namespace) else None) or env.get(ENV_PREFIX + "CONFIG")
    explicit = path is not None
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    file_values = read_file(path) if path else {}
    if explicit and not file_values and not os.path.exists(path):
        raise ConfigError("config", f"{path} does not exist")
    return build(cli, env, file_values, path)


def with_changes(cfg: Config, **changes: Any) -> Config:
    return replace(cfg, **changes)
