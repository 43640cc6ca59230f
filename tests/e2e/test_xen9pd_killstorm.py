"""Kill storm, CI size: 10 SIGKILLs of random ring workers of 4 guests x 2 rings under a verified load.

The long run (50 kills) is `python -m tests.e2e.killstorm --kills 50`; see docs/RELIABILITY.md.
"""
from __future__ import annotations

import pytest

from tests.e2e.killstorm import check, storm


@pytest.mark.slow
def test_ten_sigkills_under_a_verified_load_lose_and_double_nothing():
    result = storm(kills=10, guests=4, seed=1)
    check(result)
    assert sum(result["killed"].values()) == 10
    # The workload really did each kind of non-idempotent operation, across the kills.
    for op in ("write", "append", "create", "rename", "unlink", "read", "readdir"):
        assert result["ops"].get(op, 0) > 0, result["ops"]
