"""The adversarial suite: one operator-built mesh (cloud + edge daemons) per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import Mesh, operator_mesh, set_long


@pytest.fixture(scope="session", autouse=True)
def _adversarial_long(request: pytest.FixtureRequest) -> None:
    set_long(bool(request.config.getoption("--adversarial-long")))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with operator_mesh(tmp_path_factory.mktemp("adversarial")) as built:
        yield built
