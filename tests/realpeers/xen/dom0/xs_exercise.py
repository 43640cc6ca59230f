"""Drives the project's real-Xen XenStore (open_xenstore/PyxsXenStore) against the real xenstored.
Prints one 'PASS name detail' or 'FAIL name detail' line per check (with a traceback on failure)."""
import sys
import threading
import time
import traceback

from xen9p_common.platform import Perm
from xen9p_common.platform.xen import read_self_domid
from xen9p_common.platform.xen.xenstore import PyxsXenStore, open_xenstore

BASE = "/local/domain/0/xen9p-lab-exercise"
results = []


def check(name):
    def wrap(fn):
        try:
            detail = fn() or ""
            print(f"PASS {name} {detail}", flush=True)
            results.append(True)
        except Exception as e:
            print(f"FAIL {name} {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stdout)
            results.append(False)
        return fn
    return wrap


def wait_watch(xs, want, timeout=10.0):
    """Watch events until one whose path is in `want`; returns the events seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ev = xs.wait_event(deadline - time.monotonic())
        if ev is None:
            break
        seen.append(ev)
        if ev.path in want:
            return seen
    raise AssertionError(f"no event for {want} within {timeout}s; saw {seen}")


xs = open_xenstore()


@check("open_xenstore-is-pyxs")
def _():
    assert isinstance(xs, PyxsXenStore), type(xs)
    return xs.path


@check("read-domid-and-name")
def _():
    assert xs.read("/local/domain/0/name") == "Domain-0", xs.read("/local/domain/0/name")
    assert read_self_domid() == 0
    return "Domain-0, self domid 0"


@check("write-read-rm")
def _():
    xs.write(BASE + "/a", "1")
    assert xs.read(BASE + "/a") == "1"
    xs.write(BASE + "/empty", "")
    assert xs.read(BASE + "/empty") == ""
    xs.write(BASE + "/utf8", "h\u00e9llo")
    assert xs.read(BASE + "/utf8") == "h\u00e9llo"
    assert sorted(xs.list(BASE)) == ["a", "empty", "utf8"], xs.list(BASE)
    xs.rm(BASE + "/a")
    assert xs.read(BASE + "/a") is None


@check("mkdir-perms")
def _():
    xs.mkdir(BASE + "/d")
    xs.set_perms(BASE + "/d", [Perm("n", 0), Perm("r", 5)])
    got = xs.get_perms(BASE + "/d")
    assert [p.wire() for p in got] == ["n0", "r5"], got
    return ",".join(p.wire() for p in got)


@check("read-missing-is-none")
def _():
    assert xs.read(BASE + "/nope/deeper") is None


@check("watch-fires-initially-and-on-write")
def _():
    xs.watch(BASE + "/w", "tok-w")
    first = wait_watch(xs, {BASE + "/w"})
    xs.write(BASE + "/w/child", "x")
    later = wait_watch(xs, {BASE + "/w/child"})
    assert all(ev.token == "tok-w" for ev in first + later)
    xs.unwatch(BASE + "/w", "tok-w")
    return f"{len(first)}+{len(later)} events"


@check("watch-event-fd-is-pollable")
def _():
    import select
    xs.watch(BASE + "/p", "tok-p")
    r, _, _ = select.select([xs.event_fd()], [], [], 5.0)
    assert r, "event_fd not readable after a watch's initial fire"
    assert wait_watch(xs, {BASE + "/p"})
    xs.unwatch(BASE + "/p", "tok-p")


@check("special-watch-introduceDomain")
def _():
    xs.watch("@introduceDomain", "tok-i")
    wait_watch(xs, {"@introduceDomain"})
    xs.unwatch("@introduceDomain", "tok-i")


@check("transaction-commit")
def _():
    def tx(t):
        t.mkdir(BASE + "/tx")
        t.write(BASE + "/tx/k", "v")
        t.set_perms(BASE + "/tx", [Perm("n", 0), Perm("r", 7)])
        return t.read(BASE + "/tx/k")
    assert xs.transaction(tx) == "v"
    assert xs.read(BASE + "/tx/k") == "v"


@check("transaction-abort-on-exception")
def _():
    class Boom(Exception):
        pass
    def tx(t):
        t.write(BASE + "/tx/aborted", "1")
        raise Boom()
    try:
        xs.transaction(tx)
    except Boom:
        pass
    assert xs.read(BASE + "/tx/aborted") is None


@check("transaction-conflict-retries")
def _():
    other = open_xenstore()
    calls = []
    def tx(t):
        calls.append(1)
        t.read(BASE + "/tx/k")
        if len(calls) == 1:
            other.write(BASE + "/tx/k", "changed")  # outside the transaction: commit must say EAGAIN
        t.write(BASE + "/tx/k", "mine")
    xs.transaction(tx)
    other.close()
    assert xs.read(BASE + "/tx/k") == "mine"
    return f"{len(calls)} attempts"


@check("concurrent-threads")
def _():
    errs = []
    def worker(i):
        try:
            for j in range(20):
                xs.write(f"{BASE}/c/{i}", str(j))
                assert xs.read(f"{BASE}/c/{i}") is not None
        except Exception as e:
            errs.append(e)
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not errs, errs
    assert sorted(xs.list(BASE + "/c")) == ["0", "1", "2", "3"]


@check("permission-denied-errno")
def _():
    # dom0 is privileged, so exercise an errno path we can provoke: rm of a missing node.
    try:
        xs.rm(BASE + "/missing/node")
    except Exception as e:
        return f"rm missing -> {type(e).__name__} errno={getattr(e, 'errno', None)}"
    return "rm missing -> no error (xenstored tolerates it)"


@check("cleanup")
def _():
    xs.rm(BASE)
    assert xs.read(BASE) is None


xs.close()
print(f"DONE pass={results.count(True)} fail={results.count(False)}")
sys.exit(0 if all(results) else 1)
