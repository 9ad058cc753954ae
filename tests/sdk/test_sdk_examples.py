"""examples/: the sample configs load; device_app.py enrolls and sends readings to an edge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sdk_support import Infra

from securemesh.node import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize(("name", "tier"), [("edge.toml", "edge"), ("cloud.toml", "cloud")])
def test_sample_configs_load(name: str, tier: str) -> None:
    config = load_config(EXAMPLES / name)
    assert config.tier == tier
    assert config.policy.build() is not None


# Runs the example as __main__, then checks the process never imported heavy modules.
RUNNER = """
import runpy, sys
sys.argv = ["device_app.py"] + sys.argv[1:]
try:
    runpy.run_path({path!r}, run_name="__main__")
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
heavy = [m for m in ("sqlalchemy", "tenseal", "numpy", "securemesh.cli") if m in sys.modules]
assert not heavy, heavy
print("FOOTPRINT-OK")
"""


def test_device_app_enrolls_and_sends_readings(infra: Infra, tmp_path: Path) -> None:
    env = dict(os.environ, SECUREMESH_PASSPHRASE="example-passphrase")
    runner = RUNNER.format(path=str(EXAMPLES / "device_app.py"))
    args = ["--data-dir", str(tmp_path / "sensor-7"), "--count", "3", "--interval", "0.05"]
    # the test edge's namespace is "dev-" (sdk_support.EDGE_NAME_PREFIX)
    enroll_args = ["--node-id", "dev-sensor-7", "--token", infra.token(), "--kdf-memlimit-mib", "8"]
    first = subprocess.run(
        [sys.executable, "-c", runner, *args, *enroll_args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    assert "FOOTPRINT-OK" in first.stdout
    readings = [infra.readings.get(timeout=10) for _ in range(3)]
    assert [r[0] for r in readings] == ["dev-sensor-7"] * 3
    assert [r[1]["seq"] for r in readings] == [0, 1, 2]
    assert {"sensor", "celsius", "load_1m", "ts"} <= set(readings[0][1])
    # enrolled once; the next run just connects
    again = subprocess.run(
        [sys.executable, "-c", runner, *args[:3], "1"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert infra.readings.get(timeout=10)[1]["seq"] == 0
