"""Conformance of the simulated xenstored against real clients: Debian's xenstore-utils, pyxs, our client.

Expected results are what docs/misc/xenstore.txt and the tools' own behaviour on a real xenstored document.
The C tools (libxenstore 4.17) find the sim through XENSTORED_PATH (or XENSTORED_RUNDIR/socket); they need no /proc/xen.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading

import pytest

from xen9p_common.errors import XenStoreError
from xen9p_common.platform import Perm, WatchEvent
from xen9p_common.platform.xswire import XsWireClient
from tests.integration.xs_fixtures import (dom0, make_guest, run_tool, xenstored,  # noqa: F401
                                           xs_dir, xs_tools_or_skip)
from tests.waiting import wait_for


@pytest.fixture
def tools():
    xs_tools_or_skip()


def pyxs_client(path):
    import pyxs
    return pyxs.Client(unix_socket_path=path)


def in_thread(fn, timeout=5.0):
    """Run a call that could block forever (raw pyxs) with a deadline."""
    box = {}

    def run():
        try:
            box["v"] = fn()
        except BaseException as e:  # reported to the test below
            box["e"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "call did not return in time"
    if "e" in box:
        raise box["e"]
    return box["v"]


# -- xenstore-utils --------------------------------------------------------------

def test_tools_write_read_empty_and_missing(tools, xenstored):
    assert run_tool(xenstored, "xenstore-write", "/c/a", "", "/c/b", "hello world").returncode == 0
    r = run_tool(xenstored, "xenstore-read", "/c/b", "/c/a")
    assert r.returncode == 0 and r.stdout == "hello world\n\n"
    missing = run_tool(xenstore_path := xenstored.socket_path, "xenstore-read", "/c/missing")
    assert missing.returncode == 1 and "couldn't read path /c/missing" in missing.stderr
    assert xenstore_path


def test_tools_ls_format(tools, xenstored, dom0):
    dom0.write("/fmt/a", "1")
    dom0.write("/fmt/a/deep", "x y")
    dom0.write("/fmt/b", "")
    r = run_tool(xenstored, "xenstore-ls", "/fmt")
    assert r.returncode == 0
    assert r.stdout == 'a = "1"\n deep = "x y"\nb = ""\n'
    r = run_tool(xenstored, "xenstore-ls", "-f", "/fmt")
    assert r.stdout == '/fmt/a = "1"\n/fmt/a/deep = "x y"\n/fmt/b = ""\n'
    dom0.set_perms("/fmt/b", [Perm("n", 0), Perm("r", 3)])
    r = run_tool(xenstored, "xenstore-ls", "-f", "-p", "/fmt/b")
    assert r.returncode == 0 and r.stdout == ""  # no children
    r = run_tool(xenstored, "xenstore-ls", "-f", "-p", "/fmt")
    assert '/fmt/b = ""   (n0,r3)' in r.stdout.splitlines()


def test_tools_list_exists_rm(tools, xenstored, dom0):
    dom0.write("/l/x", "1")
    dom0.write("/l/y", "2")
    r = run_tool(xenstored, "xenstore-list", "/l")
    assert r.returncode == 0 and sorted(r.stdout.split()) == ["x", "y"]
    assert run_tool(xenstored, "xenstore-exists", "/l/x").returncode == 0
    assert run_tool(xenstored, "xenstore-exists", "/l/z").returncode == 1
    assert run_tool(xenstored, "xenstore-rm", "/l/x").returncode == 0
    assert dom0.read("/l/x") is None
    # Removing a missing node whose parent exists succeeds; a missing parent fails (xenstore.txt RM).
    assert run_tool(xenstored, "xenstore-rm", "/l/zz").returncode == 0
    assert run_tool(xenstored, "xenstore-rm", "/nothere/zz").returncode == 1
    assert run_tool(xenstored, "xenstore-list", "/nothere").returncode == 1


def test_tools_chmod(tools, xenstored, dom0):
    dom0.write("/ch/a/b", "1")
    assert run_tool(xenstored, "xenstore-chmod", "/ch/a", "n0", "r5", "w6").returncode == 0
    assert dom0.get_perms("/ch/a") == [Perm("n", 0), Perm("r", 5), Perm("w", 6)]
    assert dom0.get_perms("/ch/a/b") == [Perm("n", 0)]  # not recursive without -r
    assert run_tool(xenstored, "xenstore-chmod", "-r", "/ch", "b3").returncode == 0
    assert dom0.get_perms("/ch/a/b") == [Perm("b", 3)]
    assert run_tool(xenstored, "xenstore-chmod", "/ch", "x1").returncode != 0


def test_tools_long_directory(tools, xenstored, dom0):
    names = [f"entry-with-a-rather-long-name-{i:04d}" for i in range(250)]

    def fill(t):
        for n in names:
            t.write(f"/long/{n}", "")

    dom0.transaction(fill)
    r = run_tool(xenstored, "xenstore-list", "/long")  # > 4096 bytes: libxenstore uses DIRECTORY_PART
    assert r.returncode == 0 and sorted(r.stdout.split()) == names


def test_tools_watch_initial_fire_and_order(tools, xenstored, dom0):
    env = dict(os.environ, XENSTORED_PATH=xenstored.socket_path)
    p = subprocess.Popen(["xenstore-watch", "-n", "4", "/ord"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "/ord\n"  # the initial fire, though /ord does not exist yet
        for name in ("a", "b", "c"):
            dom0.write(f"/ord/{name}", name)
        dom0.write("/order-unrelated", "")  # /ord must not match /order-unrelated
        out, _ = p.communicate(timeout=10)
        assert out.splitlines() == ["/ord/a", "/ord/b", "/ord/c"]
        assert p.returncode == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_tools_as_guest_are_confined(tools, xenstored, dom0):
    guest = make_guest(xenstored, dom0, 5)
    guest.close()
    dsock = xenstored.domain_socket(5)
    assert run_tool(dsock, "xenstore-write", "data/x", "1").returncode == 0  # relative to /local/domain/5
    assert dom0.read("/local/domain/5/data/x") == "1"
    assert dom0.get_perms("/local/domain/5/data/x")[0] == Perm("n", 5)
    r = run_tool(dsock, "xenstore-read", "/local/domain/0/name")
    assert r.returncode == 1 and "couldn't read path" in r.stderr
    assert run_tool(dsock, "xenstore-write", "/local/domain/0/evil", "1").returncode == 1
    assert dom0.read("/local/domain/0/evil") is None
    assert run_tool(dsock, "xenstore-chmod", "data/x", "n6").returncode == 1  # cannot give it away
    r = run_tool(dsock, "xenstore-ls", "/local/domain/5")
    assert r.returncode == 0 and r.stdout == 'data = ""\n x = "1"\n'


def test_cli_main_serves_tools(tools, xs_dir):
    sock = os.path.join(xs_dir, "cli.sock")
    p = subprocess.Popen([sys.executable, "-m", "xen9p_sim.xenstore.xenstored", "--socket", sock],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        wait_for(lambda: os.path.exists(sock) or p.poll() is not None, 15, "sim xenstored socket")
        assert run_tool(sock, "xenstore-write", "/cli", "ok").returncode == 0
        assert run_tool(sock, "xenstore-read", "/cli").stdout == "ok\n"
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        assert not os.path.exists(sock)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# -- pyxs, unmodified --------------------------------------------------------------

def test_pyxs_unmodified(xenstored):
    with pyxs_client(xenstored.socket_path) as c:
        in_thread(lambda: c.write(b"/px/a", b"1"))
        assert in_thread(lambda: c.read(b"/px/a")) == b"1"
        assert in_thread(lambda: c.list(b"/px")) == [b"a"]
        assert in_thread(lambda: c.exists(b"/px/none")) is False
        assert in_thread(lambda: c.get_perms(b"/px/a")) == [b"n0"]
        assert in_thread(lambda: c.get_domain_path(3)) == b"/local/domain/3"
        assert in_thread(lambda: c.is_domain_introduced(3)) is False
        m = c.monitor()
        in_thread(lambda: m.watch(b"/px", b"tok"))
        events = m.wait()
        assert in_thread(lambda: next(events)) == (b"/px", b"tok")
        in_thread(lambda: c.write(b"/px/b", b"2"))
        assert in_thread(lambda: next(events)) == (b"/px/b", b"tok")
        in_thread(lambda: m.unwatch(b"/px", b"tok"))


def test_transactions_racing_from_two_clients(xenstored):
    """Two pyxs clients race; the loser's commit returns False (EAGAIN); our retry helper then wins."""
    with pyxs_client(xenstored.socket_path) as a, pyxs_client(xenstored.socket_path) as b:
        in_thread(lambda: a.write(b"/race", b"0"))
        in_thread(a.transaction)
        in_thread(b.transaction)
        va = in_thread(lambda: a.read(b"/race"))
        vb = in_thread(lambda: b.read(b"/race"))
        in_thread(lambda: a.write(b"/race", b"%d" % (int(va) + 1)))
        in_thread(lambda: b.write(b"/race", b"%d" % (int(vb) + 1)))
        assert in_thread(a.commit) is True
        assert in_thread(b.commit) is False  # EAGAIN: /race changed under b
        assert in_thread(lambda: b.read(b"/race")) == b"1"

    with XsWireClient(xenstored.socket_path, timeout=5) as ours, XsWireClient(xenstored.socket_path) as other:
        attempts = []

        def incr(t):
            v = int(t.read("/race"))
            if not attempts:  # race once: the other client commits first
                other.transaction(lambda t2: t2.write("/race", str(int(t2.read("/race")) + 1)))
            attempts.append(v)
            t.write("/race", str(v + 1))

        ours.transaction(incr)
        assert attempts == [1, 2]
        assert ours.read("/race") == "3"


def test_ordering_of_watch_events_across_clients(xenstored):
    with XsWireClient(xenstored.socket_path, timeout=5) as w, XsWireClient(xenstored.socket_path) as wr:
        w.watch("/seq", "s")
        assert w.wait_event(2) == WatchEvent("/seq", "s")
        for i in range(50):
            wr.write(f"/seq/{i}", str(i))
        got = [w.wait_event(2) for _ in range(50)]
        assert [e.path for e in got] == [f"/seq/{i}" for i in range(50)]


def test_guest_denied_other_domains_nodes_with_pyxs(xenstored, dom0):
    make_guest(xenstored, dom0, 5).close()
    make_guest(xenstored, dom0, 6).close()
    dom0.write("/local/domain/6/secret", "s")
    with pyxs_client(xenstored.domain_socket(5)) as g:
        import pyxs
        with pytest.raises(pyxs.PyXSError) as ei:
            in_thread(lambda: g.read(b"/local/domain/6/secret"))
        assert ei.value.args[0] == errno.EACCES
        in_thread(lambda: g.write(b"ok", b"1"))
    assert dom0.read("/local/domain/5/ok") == "1"


def test_empty_value_all_clients(tools, xenstored, dom0):
    dom0.write("/e1", "")
    assert run_tool(xenstored, "xenstore-read", "/e1").stdout == "\n"
    assert run_tool(xenstored, "xenstore-write", "/e2", "").returncode == 0
    assert dom0.read("/e2") == ""
    with pyxs_client(xenstored.socket_path) as c:
        assert in_thread(lambda: c.read(b"/e2")) == b""
        with pytest.raises(ValueError):  # pyxs refuses to write an empty value itself
            c.write(b"/e3", b"")
    with pytest.raises(XenStoreError):
        dom0.read("/bad//path")
