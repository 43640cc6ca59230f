"""xen9pd's [[export]] policy with real workers: read-only by domain name, the model by tag, a limit's
default by path prefix, shown by `xen9pctl devices`, and a SIGHUP reload that reaches new devices.
"""
from __future__ import annotations

import errno
import json
import os
import signal

import pytest

from tests.e2e.real_guest import RealGuest, World, xen9pctl
from xen9p_sim.client import P9Error
from xen9p_sim.toolstack import create_domain


@pytest.fixture(scope="module")
def world():
    w = World("pol", log_level="info")
    yield w
    w.close()


def _status(world) -> dict:
    return {d["name"]: d for d in world.daemon.status()["devices"]}


def _policies(world) -> list[dict]:
    return [{"domain": "install-media", "readonly": True},
            {"tag": "plain", "security_model": "none"},
            {"path": os.path.join(world.dir, "export63"), "max_open_files": 3}]


def test_policies_reach_new_devices_and_reload(world):
    world.daemon.stop()
    world.start_daemon(export=json.dumps(_policies(world)))
    create_domain(world.xs, 61, name="install-media")
    os.makedirs(os.path.join(world.dir, "export61"), exist_ok=True)
    with open(os.path.join(world.dir, "export61", "readme"), "w") as f:
        f.write("shared")
    ro = RealGuest(world, 61, model="mapped-xattr").mount()
    plain = RealGuest(world, 62, tag="plain", model="passthrough").mount()
    limited = RealGuest(world, 63).mount()
    try:
        with pytest.raises(P9Error) as e:
            ro.root.create("new")
        assert e.value.errno == errno.EROFS
        with pytest.raises(P9Error) as e:
            ro.root.mkdir("d", 0o755)
        assert e.value.errno == errno.EROFS
        with ro.root.open_path("readme") as f:
            assert f.read() == b"shared"
        assert os.listdir(ro.export) == ["readme"]
        assert plain.works() and limited.works()

        st = _status(world)
        assert st["dom61/dev0"]["readonly"] and not st["dom62/dev0"]["readonly"]
        assert st["dom62/dev0"]["security_model"] == "none"
        assert st["dom63/dev0"]["limits"]["max_open_files"] == 3
        out = xen9pctl(world.daemon, "devices")
        assert out.returncode == 0, out.stderr
        rows = {ln.split()[0]: ln.split() for ln in out.stdout.splitlines() if ln.startswith("dom6")}
        assert "ro" in rows["dom61/dev0"] and "rw" in rows["dom62/dev0"]

        # SIGHUP: a new table makes dom64 read-only; devices already set up keep what they had.
        with open(world.daemon.config_path) as f:
            lines = [ln for ln in f if not ln.startswith("export =")]
        with open(world.daemon.config_path, "w") as f:
            f.writelines(lines)
            f.write('\n[[export]]\ndomain = 64\nreadonly = true\n')
        world.daemon.proc.send_signal(signal.SIGHUP)
        world.daemon.wait_log("configuration reloaded (export)")
        late = RealGuest(world, 64).mount()
        try:
            with pytest.raises(P9Error) as e:
                late.root.create("new")
            assert e.value.errno == errno.EROFS
            st = _status(world)
            assert st["dom64/dev0"]["readonly"] and st["dom61/dev0"]["readonly"]
            assert plain.works("after-reload")
        finally:
            late.close()
    finally:
        for g in (ro, plain, limited):
            g.close()
