"""Measurement families; each has NAME, missing(ctx) -> reason or None, and run(ctx).

Order matters only for reading the log: limits first, so every later figure has its reference.
"""
from . import limits, peers, ring

FAMILIES = (limits, ring, peers)
