"""Sans-IO 9P2000.L / 9P2000.u codec shared by the server, our client, the simulated guest and the bench.

Bytes in, typed messages out, bytes back; no I/O anywhere in this package.
"""
from .messages import *  # noqa: F401,F403
from .messages import __all__ as _msg_all
from .stream import FrameBuffer
from .wire import Qid, QID_ZERO, MAXWELEM
from .dirent import Dirent, pack_dirent, unpack_dirents, dirent_size, DIRENT_OVERHEAD
from .stat import StatRecord, STAT_DONT_TOUCH, pack_stat, unpack_stat, unpack_stats, stat_size
from . import constants

__all__ = list(_msg_all) + ["FrameBuffer", "Qid", "QID_ZERO", "MAXWELEM", "Dirent", "pack_dirent",
                            "unpack_dirents", "dirent_size", "DIRENT_OVERHEAD", "constants",
                            "StatRecord", "STAT_DONT_TOUCH", "pack_stat", "unpack_stat", "unpack_stats", "stat_size"]
