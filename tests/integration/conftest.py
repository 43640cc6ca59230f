"""Fixtures shared by the integration tests (the ring-worker harness's device factory)."""
from .ring_worker_harness import device_factory  # noqa: F401
