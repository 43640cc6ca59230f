"""xen9p benchmark harness: `python -m bench` measures the ring path, the socket peers and the limits.

Each measurement family is a module in bench/families that says what it needs and is skipped with a reason.
"""
