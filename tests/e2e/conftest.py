"""Fixtures shared by the e2e tests."""
from __future__ import annotations

import pytest

from tests.e2e.xen9pd_helpers import SimXenstored


@pytest.fixture
def sim(tmp_path):
    """A simulated xenstored in tmp_path and a client of it: (sim directory, client)."""
    xsd = SimXenstored(str(tmp_path))
    xs = xsd.client()
    yield str(tmp_path), xs
    xs.close()
    xsd.stop()
