"""pid_alive: live, reaped and zombie processes."""
import os
import subprocess
import sys

from xen9p_common.procs import pid_alive


def test_self_is_alive_and_nonsense_pids_are_not():
    assert pid_alive(os.getpid())
    assert not pid_alive(0) and not pid_alive(-1)


def test_a_zombie_is_dead_and_so_is_a_reaped_child():
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    assert pid_alive(p.pid)
    p.stdin.close()  # the child exits; not reaped yet: a zombie
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    assert not pid_alive(p.pid)
    p.wait()
    assert not pid_alive(p.pid)
