"""The node daemon: strict config, data directory loading, readiness, status, signals, logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from node_testlib import Fixture, build_node, run, write_data_dir, zmq_factory

from securemesh.errors import ConfigError
from securemesh.node import NodeConfig, load_config, read_status, run_node
from securemesh.node._daemon import load_passphrase

PY = sys.executable


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('node_id = "a"\ntier = "edge"\nheartbeat_interval = "10"\n', "heartbeat_interval"),
        ('node_id = "a"\ntier = "edge"\ncolour = "blue"\n', "colour"),
        ('node_id = "a"\ntier = "moon"\n', "tier"),
        ('node_id = "a b"\ntier = "edge"\n', "node_id"),
        (
            'node_id = "a"\ntier = "cloud"\n[parent]\nendpoint = "tcp://x:1"\n'
            'curve_key = "' + "00" * 32 + '"\n',
            "parent",
        ),
        (
            'node_id = "a"\ntier = "edge"\n[parent]\nendpoint = "tcp://x:1"\ncurve_key = "short"\n',
            "curve_key",
        ),
        ('node_id = "a"\ntier = "end"\n', "parent"),
        ('node_id = "a"\ntier = "edge"\n[limits]\nmax_inflight = 0\n', "max_inflight"),
        ('node_id = "a"\ntier = "edge"\n[[policy.allow]]\ntypes = []\n', "policy"),
        ("not toml = = =", "TOML"),
    ],
)
def test_config_errors_are_clear(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert needle in str(info.value)


def test_config_defaults_and_keys(tmp_path: Path) -> None:
    key_hex = "ab" * 32
    cfg = load_config(
        _write(
            tmp_path,
            f'node_id = "e1"\ntier = "edge"\nlisten = "tcp://127.0.0.1:0"\n'
            f'[parent]\nendpoint = "tcp://127.0.0.1:9"\ncurve_key = "{key_hex}"\n',
        )
    )
    assert cfg.parent is not None
    assert cfg.parent.curve_key_bytes == bytes.fromhex(key_hex)
    assert cfg.limits.max_inflight == 256
    assert cfg.policy.allow == []
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.toml")


def test_passphrase_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = NodeConfig(node_id="a", tier="edge")
    monkeypatch.delenv("SECUREMESH_PASSPHRASE", raising=False)
    with pytest.raises(ConfigError):
        load_passphrase(cfg)
    monkeypatch.setenv("SECUREMESH_PASSPHRASE", "from-env")
    assert load_passphrase(cfg) == "from-env"
    (tmp_path / "pw").write_text("from-file\n")
    cfg = NodeConfig(node_id="a", tier="edge", passphrase_file=str(tmp_path / "pw"))
    assert load_passphrase(cfg) == "from-file"


def test_daemon_in_process_serves_ready_status_and_stops(tmp_path: Path) -> None:
    fx = Fixture()
    cloud_m = fx.member("cloud-1", "cloud")
    dev_m = fx.member("dev-1", "end")
    toml = write_data_dir(
        fx, cloud_m, tmp_path / "cloud", listen="tcp://127.0.0.1:0", peers=[dev_m]
    )
    config = load_config(toml)

    async def main() -> None:
        stop = asyncio.Event()

        def service(node: object) -> None:
            from securemesh.node import MeshNode

            assert isinstance(node, MeshNode)

            async def echo(msg: object) -> bytes:
                return b'{"ok":true}'

            node.on("app.echo", echo)

        task = asyncio.create_task(
            run_node(config, passphrase="test-passphrase", services=[service], stop=stop)
        )
        ready = tmp_path / "cloud" / "ready"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not ready.exists():
            assert loop.time() < deadline
            assert not task.done(), task
            await asyncio.sleep(0.01)
        info = json.loads(ready.read_text())
        assert info["node_id"] == "cloud-1"
        # a device (in-process MeshNode) talks to the daemon
        dev = build_node(
            fx,
            dev_m,
            zmq_factory(),
            parent_endpoint=(str(info["listen"]), cloud_m.identity.curve_public),
        )
        device = dev.node
        await device.start()
        await device.wait_parent(10)
        reply = await device.request("cloud-1", "app.echo", b"{}", timeout=5)
        assert reply.body_bytes == b'{"ok":true}'
        deadline = loop.time() + 10
        while True:
            status = read_status(config)
            if status["peers"]:
                break
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        assert status["alive"] is True
        assert status["node_id"] == "cloud-1"
        assert status["state"] == "running"
        await device.stop(0.1)
        stop.set()
        assert await task == 0
        assert not ready.exists()
        final = read_status(config)
        assert final["state"] == "stopped"
        assert final["alive"] is False

    run(main())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SECUREMESH_PASSPHRASE", None)
    return env


def _wait_ready(
    path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited: {proc.stderr.read() if proc.stderr else ''!r}")
        if time.monotonic() > deadline:
            raise AssertionError("daemon not ready in time")
        time.sleep(0.02)
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def test_cli_run_status_and_sigterm(tmp_path: Path) -> None:
    fx = Fixture()
    cloud_m = fx.member("cloud-1", "cloud")
    toml = write_data_dir(fx, cloud_m, tmp_path / "c", listen="tcp://127.0.0.1:0")
    proc = subprocess.Popen(
        [PY, "-m", "securemesh", "node", "run", "--config", str(toml)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        _wait_ready(tmp_path / "c" / "ready", proc)
        status = subprocess.run(
            [PY, "-m", "securemesh", "node", "status", "--config", str(toml)],
            capture_output=True,
            env=_env(),
            timeout=30,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["node_id"] == "cloud-1"
        assert data["alive"] is True
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    events = [line.get("event") for line in lines]
    assert "ready" in events
    assert "stopped" in events
    text = err.decode()
    assert "test-passphrase" not in text
    assert cloud_m.identity.signer.seed().hex() not in text
    assert cloud_m.identity.curve_secret_z85() not in text
    after = subprocess.run(
        [PY, "-m", "securemesh", "node", "status", "--config", str(toml)],
        capture_output=True,
        env=_env(),
        timeout=30,
        check=False,
    )
    assert after.returncode == 3
    assert json.loads(after.stdout)["state"] == "stopped"


def test_cli_refuses_to_start_without_a_usable_identity(tmp_path: Path) -> None:
    fx = Fixture()
    cloud_m = fx.member("cloud-1", "cloud")
    toml = write_data_dir(fx, cloud_m, tmp_path / "c", listen="tcp://127.0.0.1:0")
    (tmp_path / "c" / "passphrase").write_text("wrong\n")
    result = subprocess.run(
        [PY, "-m", "securemesh", "node", "run", "--config", str(toml)],
        capture_output=True,
        env=_env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert b"identity" in result.stderr
    assert not (tmp_path / "c" / "ready").exists()


@pytest.mark.parametrize(
    ("trust", "needle"),
    [
        ('{"roots": {}}', "not a trusted root"),  # the revocation list's issuer
        ('{"roots": {"root": "not-a-key!"}}', "invalid trust"),
        ("[1, 2]", "invalid trust"),
    ],
)
def test_a_bad_trust_file_is_a_config_error(tmp_path: Path, trust: str, needle: str) -> None:
    from securemesh.node._daemon import NodeFiles, load_trust

    fx = Fixture()
    write_data_dir(fx, fx.member("cloud-1", "cloud"), tmp_path / "c", listen="tcp://127.0.0.1:0")
    files = NodeFiles(tmp_path / "c")
    assert set(load_trust(files).roots) == {"root"}
    files.trust.write_text(trust)
    with pytest.raises(ConfigError, match=needle):
        load_trust(files)
    files.revocation_list.unlink()
    files.trust.write_text('{"roots": {}}')
    with pytest.raises(ConfigError, match="names no root"):
        load_trust(files)
    files.trust.unlink()
    with pytest.raises(ConfigError, match="invalid trust"):
        load_trust(files)


def test_replay_state_survives_a_daemon_restart(tmp_path: Path) -> None:
    from securemesh.transport import ZmqTransport
    from securemesh.wire import encode_signed

    fx = Fixture()
    cloud_m = fx.member("cloud-1", "cloud")
    dev_m = fx.member("dev-1", "end")
    toml = write_data_dir(fx, cloud_m, tmp_path / "c", listen="tcp://127.0.0.1:0", peers=[dev_m])
    config = load_config(toml)
    frames = [
        bytes(f)
        for f in encode_signed(
            msg_type="mesh.ping",
            sender="dev-1",
            recipient="cloud-1",
            sequence=1000,
            timestamp_ms=int(time.time() * 1000),
            body=b"{}",
            signer=dev_m.identity.signer,
        )
    ]

    async def once(expect: str) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_node(config, passphrase="test-passphrase", stop=stop))
        ready = tmp_path / "c" / "ready"
        while not ready.exists():
            assert not task.done()
            await asyncio.sleep(0.01)
        address = json.loads(ready.read_text())["listen"]
        raw = ZmqTransport(dev_m.keypair)
        conn = await raw.connect(address, cloud_m.identity.curve_public)
        await conn.send(cloud_m.identity.curve_public, frames, timeout=5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            counters = read_status(config)["counters"]
            if expect == "accepted" and counters["accepted"] >= 1:
                break
            if expect != "accepted" and counters["rejections"].get(expect, 0) >= 1:
                break
            assert loop.time() < deadline, counters
            await asyncio.sleep(0.05)
        await raw.close()
        stop.set()
        assert await task == 0

    async def main() -> None:
        await once("accepted")
        assert json.loads((tmp_path / "c" / "replay.json").read_text()) == {"dev-1": 1000}
        # the direct message set dev-1's route: its evidence is saved beside the marks
        evidence = json.loads((tmp_path / "c" / "route-evidence.json").read_text())
        assert evidence["dev-1"] == 1000
        await once("stale")  # the same frames after a restart: refused

    run(main())


def test_a_missing_service_is_a_config_error(tmp_path: Path) -> None:
    fx = Fixture()
    cloud_m = fx.member("cloud-1", "cloud")
    toml = write_data_dir(
        fx,
        cloud_m,
        tmp_path / "c",
        listen="tcp://127.0.0.1:0",
        extra_toml='services = ["no_such_module_here:register"]',
    )
    config = load_config(toml)

    async def main() -> None:
        with pytest.raises(ConfigError, match="no_such_module_here"):
            await run_node(config, passphrase="test-passphrase")

    run(main())
    assert not (tmp_path / "c" / "ready").exists()


def _run_until_ready(config: NodeConfig, data_dir: Path) -> None:
    """Start the daemon in this process, wait for its ready file, stop it (exit 0)."""

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_node(config, passphrase="test-passphrase", stop=stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not (data_dir / "ready").exists():
            assert loop.time() < deadline
            assert not task.done(), task
            await asyncio.sleep(0.01)
        stop.set()
        assert await task == 0

    run(main())


def test_the_cloud_log_key_lives_in_the_key_store(tmp_path: Path) -> None:
    """A new cloud seals its log key with the node's passphrase; a plain one is re-wrapped."""
    from securemesh.audit.admin import load_log_key
    from securemesh.crypto import keystore
    from securemesh.errors import WrongPassphrase

    fx = Fixture()
    cloud_m = fx.member("cloud-1", "cloud")
    data = tmp_path / "cloud"
    config = load_config(write_data_dir(fx, cloud_m, data, listen="tcp://127.0.0.1:0"))
    key_file = data / "audit-log.key"

    _run_until_ready(config, data)  # first start: the key is created, encrypted
    raw = key_file.read_bytes()
    assert raw.startswith(keystore.MAGIC)
    # sealed at the identity file's KDF cost (the tests' fast one here)
    assert keystore.kdf_params_of(raw) == keystore.kdf_params_of(
        (data / "identity.key").read_bytes()
    )
    key = load_log_key(key_file, "test-passphrase")
    assert key.signer.seed().hex().encode() not in raw
    with pytest.raises(WrongPassphrase):
        load_log_key(key_file, "wrong")
    verifier = (data / "audit-log.key.pub").read_text().strip()
    assert verifier == key.verifier

    # a plain key file from before the key store: the daemon uses it and seals it in place
    key_file.write_text(json.dumps({"name": key.name, "seed": key.signer.seed().hex()}))
    assert load_log_key(key_file).plain
    (data / "ready").unlink(missing_ok=True)
    _run_until_ready(config, data)
    assert key_file.read_bytes().startswith(keystore.MAGIC)
    again = load_log_key(key_file, "test-passphrase")
    assert (again.signer.seed(), again.plain) == (key.signer.seed(), False)
    assert (data / "audit-log.key.pub").read_text().strip() == verifier


def test_status_age_and_node_state_take_the_time_as_a_parameter(tmp_path: Path) -> None:
    from securemesh.node._daemon import load_node_state

    fx = Fixture()
    cloud_m = fx.member("cloud-1", "cloud")
    config = load_config(write_data_dir(fx, cloud_m, tmp_path / "c", listen="tcp://127.0.0.1:0"))
    (tmp_path / "c" / "status.json").write_text(json.dumps({"written_at": 100.0, "pid": 0}))
    status = read_status(config, now=103.5)
    assert status["age_s"] == 3.5
    assert status["alive"] is False
    state = load_node_state(config, "test-passphrase", now=fx.now)
    assert state.certificate.unverified_certificate().node_id == "cloud-1"


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("broken_services:not_a_service", b"did not return a securemesh.node.Service"),
        ("broken_services:Crashes", b"failed to install"),
    ],
)
def test_a_broken_service_is_one_error_line(tmp_path: Path, entry: str, needle: bytes) -> None:
    """``securemesh node run`` with a bad service: ``error: ...``, exit 1, no traceback."""
    (tmp_path / "broken_services.py").write_text(
        "from securemesh.node import Service\n"
        "def not_a_service():\n"
        "    return 42\n"
        "class Crashes(Service):\n"
        "    name = 'crashes'\n"
        "    def install(self, ctx):\n"
        "        raise ValueError('the bug')\n"
    )
    fx = Fixture()
    cloud_m = fx.member("cloud-1", "cloud")
    toml = write_data_dir(
        fx,
        cloud_m,
        tmp_path / "c",
        listen="tcp://127.0.0.1:0",
        extra_toml=f'services = ["{entry}"]',
    )
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [PY, "-m", "securemesh", "node", "run", "--config", str(toml)],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert needle in result.stderr
    assert b"Traceback" not in result.stderr
    assert not (tmp_path / "c" / "ready").exists()


def test_a_burst_of_enrollments_rewrites_status_once(tmp_path: Path) -> None:
    """status.json lists every child (large at 1,000 devices): enrollments ask for a write
    soon, and a burst of them gets one write, not one each."""
    from securemesh.node._daemon import STATUS_BURST_DELAY, NodeFiles, _Daemon

    daemon = _Daemon(NodeConfig(node_id="e", tier="edge"), NodeFiles(tmp_path))
    writes: list[str] = []
    daemon.write_status = lambda *, state: writes.append(state)  # type: ignore[method-assign]

    async def main() -> None:
        for _ in range(50):
            daemon._status_soon()
        assert writes == []  # not on the enrollment's own turn
        await asyncio.sleep(STATUS_BURST_DELAY + 0.2)
        assert writes == ["running"]
        daemon._status_soon()  # a later enrollment gets its own write
        await asyncio.sleep(STATUS_BURST_DELAY + 0.2)
        assert writes == ["running", "running"]

    asyncio.run(main())
