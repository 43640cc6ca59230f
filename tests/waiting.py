"""The tests' one way to wait for something: poll a predicate against a deadline (never a bare sleep)."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.01) -> T:
    """Poll predicate until it returns something truthy (returned) or `timeout` seconds pass (AssertionError).

    `interval` is the polling period of this deadline-bounded wait, not a synchronisation by sleeping.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
