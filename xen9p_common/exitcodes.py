"""Exit codes of every xen9p program (xen9pd, xen9pctl, xen9psim, the ring worker), sysexits(3)-style.

xen9pd's supervisor reads a ring worker's status with these names: EXIT_RING means the guest broke
the ring protocol, so the device is disconnected instead of the worker restarted.
"""
EXIT_OK = 0
EXIT_ERROR = 1          # failed; for xen9pctl, the daemon refused the command
EXIT_REFUSED = EXIT_ERROR
EXIT_USAGE = 2          # bad command line (argparse's own code)
EXIT_RING = 65          # EX_DATAERR: the guest broke the ring protocol
EXIT_UNAVAILABLE = 69   # EX_UNAVAILABLE: xen9pd or xenstored not running or not answering
EXIT_CONFIG = 78        # EX_CONFIG: bad configuration
