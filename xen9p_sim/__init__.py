"""The simulated Xen and its guests: used by `xen9psim` and the tests, never by xen9pd or the workers.

`xenstore/` a xenstored speaking the real wire protocol; `frontend/` the Linux-, Mini-OS- and
Unikraft-like 9pfs frontends; `workloads/` what their guests run; `client/` the 9P client they
(and the bench) speak through; `cli.py` (`xen9psim`), `toolstack.py`, `guest.py`, `demo.py`,
`children.py`, `report.py` the simulator's command line. What xen9pd and the workers themselves
run against in simulation (grant tables, event channels, the platform factory) stays in
`xen9p_common.platform.sim`.
"""
