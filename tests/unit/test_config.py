"""xen9pd configuration: precedence CLI > environment > file > defaults, validation naming the key."""
from __future__ import annotations

import os

import pytest

from xen9p_common.errors import ConfigError
from xen9p_supervisor import config
from xen9p_supervisor.xen9pd import main as xen9pd_main


def test_defaults():
    cfg = config.build({}, {})
    assert cfg.kinds == ("9pfs", "xen_9pfs")
    assert cfg.max_rings == 8 and cfg.max_ring_order == 9
    assert cfg.control == "ipc:///run/xen9p/control.sock"
    assert cfg.sources["max_rings"] == "default"


def test_precedence_cli_over_env_over_file():
    file_values = {"max_rings": 2, "log_level": "debug", "msize_cap": 8192}
    env = {"XEN9PD_MAX_RINGS": "3", "XEN9PD_LOG_LEVEL": "warning"}
    cfg = config.build({"max_rings": "4"}, env, file_values, "/x.toml")
    assert cfg.max_rings == 4 and cfg.sources["max_rings"] == "command line"
    assert cfg.log_level == "warning" and cfg.sources["log_level"] == "environment"
    assert cfg.msize_cap == 8192 and cfg.sources["msize_cap"] == "file /x.toml"


@pytest.mark.parametrize("key,value", [
    ("max_rings", "0"), ("max_rings", "65"), ("max_rings", "two"), ("max_ring_order", "0"),
    ("max_ring_order", "12"), ("kinds", "9pfs,vif"), ("kinds", ""), ("log_level", "loud"),
    ("cpus", "3-1"), ("cpus", "x"), ("cpus", "4096"), ("control", "/run/x.sock"), ("heartbeat_timeout", "-1"),
    ("startretries", "1.5"), ("prometheus", "host:port"), ("hold_libxl_node", "maybe"), ("worker_cmd", ""),
])
def test_bad_value_names_the_key(key, value):
    with pytest.raises(ConfigError) as e:
        config.build({key: value}, {})
    assert e.value.key == key
    assert key in str(e.value)


def test_unknown_key_in_file_is_named():
    with pytest.raises(ConfigError) as e:
        config.build({}, {}, {"max_ringz": 3}, "/etc/x.toml")
    assert e.value.key == "max_ringz" and "/etc/x.toml" in str(e.value)


def test_sim_needs_sim_dir():
    with pytest.raises(ConfigError) as e:
        config.build({"platform": "sim"}, {})
    assert e.value.key == "sim_dir"


def test_file_kinds_list_and_section(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[xen9pd]\nkinds = ["xen_9pfs"]\ncpus = "0"\nmax-rings = 4\n')
    import argparse
    ap = argparse.ArgumentParser()
    config.add_arguments(ap)
    cfg = config.load(ap.parse_args(["--config", str(p)]), env={})
    assert cfg.kinds == ("xen_9pfs",) and cfg.cpus == (0,) and cfg.max_rings == 4


def test_parse_cpus():
    assert config.parse_cpus("0-2,5, 7") == (0, 1, 2, 5, 7)
    assert config.parse_cpus("") == ()
    assert config.parse_cpus("1,1,0") == (1, 0)


def test_xen9pd_exits_78_naming_the_key(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text("max_rings = 99\n")
    assert xen9pd_main(["--config", str(p)]) == 78
    err = capsys.readouterr().err
    assert "max_rings" in err and err.count("\n") == 1


def test_xen9pd_bad_toml_exits_78(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text("max_rings = = 3\n")
    assert xen9pd_main(["--config", str(p)]) == 78
    assert "config" in capsys.readouterr().err


def test_xen9pd_bad_env_exits_78(monkeypatch, capsys):
    monkeypatch.setenv("XEN9PD_KINDS", "vbd")
    assert xen9pd_main(["--platform", "sim", "--sim-dir", "/nonexistent"]) == 78
    assert "kinds" in capsys.readouterr().err


def test_worker_spin_reaches_the_worker_command_line():
    from xen9p_supervisor.workers import Launcher
    cfg = config.build({"worker_spin_us": "0"}, {})
    assert cfg.worker_spin_us == 0.0 and config.build({}, {}).worker_spin_us == 30.0
    from xen9p_common.control import RingSpec
    spec = RingSpec(1, 0, 0, 8, 9, "s", "/e", "none", "ipc://x", max_ring_order=5)
    argv = Launcher(("python3", "-m", "xen9p_worker"), "sim", "/tmp/x", cfg.worker_spin_us).argv(spec)
    assert argv[argv.index("--spin-us") + 1] == "0"
    assert argv[argv.index("--max-ring-order") + 1] == "5"
    with pytest.raises(ConfigError) as e:
        config.build({"worker_spin_us": "-1"}, {})
    assert e.value.key == "worker_spin_us"


def test_options_are_the_config_fields_declared_once():
    from dataclasses import fields
    from xen9p_supervisor.config import OPTIONS, Config
    opts = [f.name for f in fields(Config) if f.name not in ("config_file", "sources")]
    assert [o.name for o in OPTIONS] == opts
    defaults = Config()
    for o in OPTIONS:
        assert o.help and getattr(defaults, o.name) == o.default and o.conv is not None


def test_the_msize_cap_default_is_one_constant_for_daemon_and_workers():
    import inspect
    from xen9p_common.p9.messages import IOHDRSZ, MSIZE_CAP
    from xen9p_supervisor.config import Config
    from xen9p_worker import cli
    from xen9p_worker.dispatch import Server
    assert MSIZE_CAP == 512 * 1024 + IOHDRSZ  # a whole 512 KiB payload per message
    assert Config().msize_cap == MSIZE_CAP
    assert inspect.signature(Server).parameters["msize_cap"].default == MSIZE_CAP
    assert cli.build_parser().get_default("msize_cap") == MSIZE_CAP
