"""The reliability suite: faults injected into real daemons (SIGKILL, SIGSTOP), and load.

It builds on the adversarial suite's operator-built mesh (``tests/adversarial/harness.py``)
and on ``tests/daemon_support.py``. ``pytest --reliability-long`` runs the long variants.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the adversarial harness (operator_mesh, RoundTrips, RssWatch), as that suite imports it
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "adversarial"))


@pytest.fixture(scope="session")
def reliability_long(request: pytest.FixtureRequest) -> bool:
    """True under ``pytest --reliability-long``."""
    return bool(request.config.getoption("--reliability-long"))
