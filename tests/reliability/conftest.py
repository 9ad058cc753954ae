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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability_long: a reliability test that runs only with --reliability-long"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``reliability_long`` tests unless ``--reliability-long`` is given."""
    if config.getoption("--reliability-long"):
        return
    skip = pytest.mark.skip(reason="minutes of wall time: run with pytest --reliability-long")
    for item in items:
        if "reliability_long" in item.keywords:
            item.add_marker(skip)
