"""Entry point of `python -m xen9p_worker`: the socket mode in cli.main(), the ring mode in ring_main,
the lock keeper in lockkeeper."""
import faulthandler
import signal
import sys

# A worker the supervisor SIGABRTs for being silent or slow leaves its stacks in the log;
# SIGUSR1 dumps every thread's stack and carries on (post-mortems of a stuck ring).
faulthandler.enable()
faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)

if len(sys.argv) > 1 and sys.argv[1] == "ring":
    from .ring_main import main as ring_main

    sys.exit(ring_main(sys.argv[2:]))
if len(sys.argv) > 1 and sys.argv[1] == "lockkeeper":
    from .lockkeeper import main as keeper_main

    sys.exit(keeper_main(sys.argv[2:]))

from .cli import main

sys.exit(main())
