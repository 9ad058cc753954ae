from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sdk_support import FAST_KDF, PASSPHRASE, Clock, EnrollFn, Infra, start_infra

from securemesh.sdk import Device, Enrollment


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def infra(tmp_path: Path, clock: Clock) -> Iterator[Infra]:
    mesh = start_infra(tmp_path, clock)
    try:
        yield mesh
    finally:
        mesh.close()
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("securemesh-sdk")]
    assert not leftover, f"SDK threads not reaped: {leftover}"


@pytest.fixture
def enroll(infra: Infra, tmp_path: Path, clock: Clock) -> EnrollFn:
    """``enroll("dev-1")`` -> Enrollment into tmp_path/dev-1 with a fresh token."""

    def run(node_id: str, *, data_dir: Path | None = None, **kwargs: object) -> Enrollment:
        return Device.enroll(
            infra.token(),
            data_dir=data_dir or tmp_path / node_id,
            node_id=node_id,
            passphrase=PASSPHRASE,
            kdf_params=FAST_KDF,
            clock=clock,
            timeout=5.0,
            **kwargs,
        )

    return run
