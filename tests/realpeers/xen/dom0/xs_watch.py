"""Records every xenstore change under the given paths and flags each 9pfs device state transition.
Harness tooling: talks pyxs directly, so it works even when the project's xenstore code is broken."""
import re
import sys
import time

from pyxs import Client
from pyxs.exceptions import PyXSError

STATE_NODE = re.compile(rb"/(backend/(9pfs|xen_9pfs)/\d+/\d+|device/9pfs/\d+)/(state|online)$")
NAMES = {b"0": "Unknown", b"1": "Initialising", b"2": "InitWait", b"3": "Initialised", b"4": "Connected",
         b"5": "Closing", b"6": "Closed", b"7": "Reconfiguring", b"8": "Reconfigured"}


def main(paths):
    t0 = time.monotonic()
    last = {}
    with Client() as c:
        m = c.monitor()
        for i, p in enumerate(paths):
            m.watch(p.encode(), b"t%d" % i)
        for path, _token in m.wait():
            t = time.monotonic() - t0
            if path.startswith(b"@"):
                print("%9.3f %s" % (t, path.decode()), flush=True)
                continue
            try:
                value = c.read(path)
            except PyXSError:
                value = None
            print("%9.3f %s = %r" % (t, path.decode(), value), flush=True)
            if STATE_NODE.search(path) and last.get(path) != value:
                old = last.get(path)
                last[path] = value
                fmt = lambda v: "gone" if v is None else "%s(%s)" % (v.decode(), NAMES.get(v, "?"))
                print("%9.3f STATE %s %s -> %s" % (t, path.decode(), fmt(old) if path in last and old is not None
                                                    else "-", fmt(value)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["/local/domain"])
