"""examples/: the sample configs load; device_app.py enrolls, and sensor_service.py at the edge
acknowledges its readings and tells it the time."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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


def _sensor_service() -> ModuleType:
    """examples/sensor_service.py, imported as the daemon would (``sensor_service``)."""
    if "sensor_service" in sys.modules:
        return sys.modules["sensor_service"]
    spec = importlib.util.spec_from_file_location("sensor_service", EXAMPLES / "sensor_service.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sensor_service"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_device_app_enrolls_and_sends_readings(infra: Infra, tmp_path: Path) -> None:
    service = _sensor_service().SensorService(max_devices=2)
    infra.loop.run(lambda: service.install(infra.edge))
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
    assert "time at edge-1: " in first.stdout
    for seq in range(3):
        assert f"acknowledged reading {seq} of temp-0 by edge-1 ({seq + 1} received" in first.stdout
    assert infra.loop.run(lambda: service.received("dev-sensor-7")) == 3
    latest = infra.loop.run(lambda: service.latest("dev-sensor-7"))
    assert (latest.sensor, latest.seq) == ("temp-0", 2)
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
    assert "acknowledged reading 0 of temp-0 by edge-1 (4 received" in again.stdout
    assert infra.loop.run(lambda: service.received("dev-sensor-7")) == 4


def test_sensor_service_state_is_bounded_and_bodies_strict() -> None:
    module = _sensor_service()
    service = module.SensorService(max_devices=2, clock=lambda: 1234.5)
    reading = {"sensor": "t", "seq": 1, "celsius": 20.5, "load_1m": 0.1, "ts": 1.0}
    with pytest.raises(ValueError, match="max_devices"):
        module.SensorService(max_devices=0)
    for device in ("a", "b", "c", "b"):
        service.record(device, module.Reading.model_validate(reading))
    assert (service.received("a"), service.received("b"), service.received("c")) == (0, 2, 1)
    with pytest.raises(ValueError, match="seq"):
        module.Reading.model_validate_json(
            b'{"sensor":"t","seq":"1","celsius":1,"load_1m":0,"ts":0}'
        )
    with pytest.raises(ValueError, match="extra"):
        module.Reading.model_validate_json(
            b'{"sensor":"t","seq":1,"celsius":1,"load_1m":0,"ts":0,"extra":1}'
        )
