"""xen9pd's [[export]] tables: parsing with clear errors, matching by domain, tag and path prefix."""
from __future__ import annotations

import pytest

from xen9p_common.errors import ConfigError
from xen9p_supervisor import config, policy


def test_tables_apply_in_order_and_match_on_every_given_key():
    pols = policy.parse([
        {"readonly": True, "max_open_files": 100},                      # every device
        {"domain": "web1", "readonly": False},
        {"domain": 7, "tag": "iso", "security_model": "none"},
        {"path": "/srv/cache", "max_space": 512, "auto-delete": True},
    ])
    r = policy.resolve(pols, 3, "web1", "share", "/srv/data")
    assert (r.readonly, r.max_open_files, r.security_model, r.max_space) == (False, 100, None, None)
    r = policy.resolve(pols, 7, "db", "iso", "/srv/cache/x")
    assert (r.readonly, r.security_model, r.max_space, r.auto_delete) == (True, "none", 512, True)
    assert policy.resolve(pols, 7, "db", "other", "/srv/cachex").security_model is None
    assert policy.resolve(pols, 7, "db", "other", "/srv/cachex").max_space is None
    assert policy.resolve((), 1, "", "", "/").readonly is False


@pytest.mark.parametrize("bad,words", [
    ({"readonly": "yes"}, "readonly must be true or false"),
    ({"domain": 0, "readonly": True}, "domain"),
    ({"domain": True, "readonly": True}, "domain"),
    ({"path": "srv", "readonly": True}, "absolute"),
    ({"tag": "x"}, "sets nothing"),
    ({"readonly": True, "colour": 1}, "unknown key 'colour'"),
    ({"security_model": "mapped-json"}, "security_model"),
    ({"max_open_files": 0}, "max_open_files"),
    ("readonly", "want a table"),
])
def test_bad_tables_name_the_table_and_key(bad, words):
    with pytest.raises(ValueError) as e:
        policy.parse([{"readonly": True}, bad])
    assert "export table 2" in str(e.value) and words in str(e.value)


def test_config_key_from_file_and_environment(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text('log_level = "info"\n\n[[export]]\ntag = "iso"\nreadonly = true\n')
    cfg = config.build({}, {}, config.read_file(str(f)), str(f))
    assert cfg.export == (policy.ExportPolicy(tag="iso", readonly=True),)
    cfg = config.build({}, {"XEN9PD_EXPORT": '[{"domain": "web1", "readonly": true}]'})
    assert cfg.export[0].domain == "web1"
    with pytest.raises(ConfigError) as e:
        config.build({}, {"XEN9PD_EXPORT": '[{"readonly": 1}]'})
    assert e.value.key == "export"
