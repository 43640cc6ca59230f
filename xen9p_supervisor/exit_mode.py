"""What SIGTERM means: close every device (stop, host shutdown) or exit leaving the workers serving (restart).

`on_sigterm` (config) is `close`, `keep-serving` or `auto` (the default). `auto` keeps serving exactly
when systemd is restarting our unit: `systemctl restart`, `try-restart`, `reload-or-restart` and the
package's postinst after an upgrade all queue a *restart* job, which systemd runs first as a stop (that
is the SIGTERM we get) while the job still says restart; `systemctl stop` and host shutdown queue stop
jobs. Outside systemd, or when systemd cannot be asked, `auto` closes (today's behaviour). SIGINT
(Ctrl-C) always closes; a crash or SIGKILL leaves the workers serving in any mode.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
from typing import Callable, Mapping

log = logging.getLogger("xen9pd")

CLOSE, KEEP_SERVING, AUTO = "close", "keep-serving", "auto"
MODES = (AUTO, CLOSE, KEEP_SERVING)
_RESTART_JOBS = ("restart", "try-restart", "reload-or-restart", "reload-or-try-restart")


def systemd_unit(cgroup_file: str = "/proc/self/cgroup") -> str | None:
    """The .service unit this process runs in (from its cgroup path), or None."""
    try:
        with open(cgroup_file) as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        path = line.rsplit(":", 1)[-1]
        for part in reversed(path.split("/")):
            if re.fullmatch(r"[\w@.\\:-]+\.service", part):
                return part
    return None


def systemd_job(unit: str, run: Callable = subprocess.run) -> str | None:
    """The type of the job systemd is running for `unit` ('stop', 'restart', ...), or None."""
    try:
        r = run(["systemctl", "list-jobs", "--no-legend", "--no-pager", "--plain", "--full"],
                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("cannot ask systemd which job stops us: %s", e)
        return None
    for line in r.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 3 and cols[1] == unit:  # JOB UNIT TYPE STATE
            return cols[2]
    return None


def keep_serving_on_sigterm(mode: str, env: Mapping[str, str] = os.environ,
                            unit: Callable[[], str | None] = systemd_unit,
                            job: Callable[[str], str | None] = systemd_job) -> bool:
    """Decide at SIGTERM time: True = exit leaving every worker serving for the next xen9pd to adopt."""
    if mode == KEEP_SERVING:
        return True
    if mode == CLOSE or not env.get("INVOCATION_ID"):  # INVOCATION_ID: started by systemd
        return False
    name = unit()
    if name is None:
        return False
    jt = job(name)
    log.info("systemd job for %s: %s", name, jt or "none")
    return jt in _RESTART_JOBS
