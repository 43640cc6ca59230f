"""Exit codes of every xen9p program (xen9pd, xen9pctl, xen9psim, the ring worker), sysexits(3)-style.

A ring worker that exits EXIT_RING found the guest breaking the ring protocol: it has already told
xen9pd (a fatal `error` message), which disconnects the device instead of restarting the worker.
"""
EXIT_OK = 0
EXIT_ERROR = 1          # failed; for xen9pctl, the daemon refused the command
EXIT_REFUSED = EXIT_ERROR
EXIT_USAGE = 2          # bad command line (argparse's own code)
EXIT_RING = 65          # EX_DATAERR: the guest broke the ring protocol
EXIT_UNAVAILABLE = 69   # EX_UNAVAILABLE: xen9pd or xenstored not running or not answering
EXIT_CONFIG = 78        # EX_CONFIG: bad configuration
