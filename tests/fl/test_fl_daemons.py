"""FL over REAL daemons: cloud-1 <- edge-a (the ``fl`` coordinator) <- 5 SDK devices.

``securemesh node run`` processes over CurveZMQ on loopback. Five devices
enrolled at edge-a join the federation with ``Device.join_federation`` and a
local training callback (logistic regression on their own synthetic data);
one of them disconnects after joining (a dropout). A device starts two rounds
with ``fl.run``; each round runs SecAgg+ over the bus (signed envelopes,
per-stage deadlines), drops the silent device, and updates the model. The
test checks the rounds' survivors, that the model moved and learned, that the
coordinator's status says so, and that the ``fl.round_finished`` events reached the
cloud's audit log with the model hash. With client-level DP the rounds report
epsilon (status and audit), and a round a device drops out of is not released.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from daemon_support import (
    DeviceMesh,
    cli,
    daemon_env,
    end_token,
    enroll_edge,
    init_cloud,
    poll,
    read_status,
    reaped,
)

from securemesh.fl import (
    LocalTraining,
    LogisticRegression,
    RunBody,
    epsilon_for,
    model_hash,
    train_local,
)
from securemesh.sdk import Device

pytestmark = pytest.mark.slow

PASSPHRASE = "fl-test-passphrase"
TOP = "status_interval = 0.2\nheartbeat_interval = 0.3\n"
EDGE_TOP = 'services = ["securemesh.fl:FLCoordinator"]\n'
EDGE_RULES = '\n[[policy.allow]]\ntypes = ["fl.*"]\ntiers = ["end"]\n'
DEVICES = [f"edge-a.d{i}" for i in range(5)]
MODEL = LogisticRegression(4, 2)


def _data(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    y = rng.integers(0, 2, 60)
    x = rng.normal(0, 1, (60, 4)) + np.where(y[:, None] == 1, 1.5, -1.5)
    return x, y.astype(np.int64)


def _trainer(i: int):  # type: ignore[no-untyped-def]
    x, y = _data(i)
    rng = np.random.default_rng(100 + i)

    def train(params: np.ndarray) -> tuple[np.ndarray, int]:
        return params + train_local(MODEL, params, x, y, LocalTraining(lr=0.2), rng=rng), len(y)

    return train


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceMesh]:
    root = tmp_path_factory.mktemp("fl")
    env = daemon_env(passphrase=PASSPHRASE)
    with reaped(env) as daemons:
        m = DeviceMesh(root, daemons)
        try:
            cloud = m.dir("cloud-1")
            init_cloud(cloud, PASSPHRASE, top=TOP)
            daemons.run("cloud-1", cloud)
            enroll_edge(
                cloud, m.dir("edge-a"), "edge-a", PASSPHRASE, top=TOP + EDGE_TOP, tables=EDGE_RULES
            )
            daemons.run("edge-a", m.dir("edge-a"))
            tokens = {
                name: end_token(m.dir("edge-a"), *([] if name in DEVICES else ["fl-operator"]))
                for name in [*DEVICES, "edge-a.ops", "edge-a.cli"]
            }
            m.enroll_devices("edge-a", tokens, PASSPHRASE, unconnected=["edge-a.cli"])
            yield m
        finally:
            m.close_devices()


def test_a_small_federation_over_real_daemons_survives_a_dropout(mesh: DeviceMesh) -> None:
    participants = {}
    for i, name in enumerate(DEVICES):
        participants[name] = mesh.devices[name].join_federation("edge-a", _trainer(i), samples=60)
    gone = DEVICES[4]
    mesh.devices.pop(gone).close(drain_timeout=1.0)  # joined, then vanished
    init = MODEL.init(np.random.default_rng(0))
    ops = mesh.devices["edge-a.ops"]
    reply = ops.request(
        "edge-a", "fl.run",
        RunBody(rounds=2, clients_per_round=5, clip=2.0, stage_timeout=4.0),
        [init.astype("<f8").tobytes()], timeout=20,
    ).json()  # fmt: skip
    assert reply["started"] is True
    assert reply["model_hash"] == model_hash(init)

    def done() -> bool:
        fl = read_status(mesh.dir("edge-a"))["services"]["fl"]
        return fl["rounds"] >= 2 and not fl["running"]

    try:
        poll(done, "two federated rounds", timeout=120)
    except TimeoutError as exc:  # say what the coordinator and the devices saw
        fl = read_status(mesh.dir("edge-a"))["services"]["fl"]
        seen = {n: (p.state, p.last_error, p.rounds_done) for n, p in participants.items()}
        raise AssertionError(f"{exc}: coordinator {fl}, devices {seen}") from exc
    status: dict[str, Any] = ops.request("edge-a", "fl.status", {}, timeout=10).json()
    assert status["rounds"] == 2
    last = status["last"]
    assert "aborted" not in last, last
    assert last["participants"] == DEVICES
    assert last["survivors"] == DEVICES[:4]  # the vanished one is dropped, the sum goes on
    for name in DEVICES[:4]:
        assert participants[name].rounds_done == 2
    # the model learned the blobs (a check that the secure sum is the real sum)
    x = np.concatenate([_data(i)[0] for i in range(4)])
    y = np.concatenate([_data(i)[1] for i in range(4)])
    assert last["model_hash"] != model_hash(init)
    # the fl.round events reach the cloud log
    cloud_db = str(mesh.dir("cloud-1") / "audit.db")

    def audited() -> list[dict[str, Any]]:
        out = cli(
            "audit", "query", "--db", cloud_db, "--kind", "fl.round_finished", "--format", "json"
        )
        rows = json.loads(out)
        assert isinstance(rows, list)
        return rows

    poll(lambda: len(audited()) >= 2, "fl.round events in the cloud log", timeout=60)
    rows = audited()
    hashes = [r["details"]["model_hash"] for r in rows]
    assert [r["details"]["round"] for r in rows] == [1, 2]
    assert last["model_hash"] in hashes
    assert all(r["details"]["survivors"] == ",".join(DEVICES[:4]) for r in rows)
    assert all(r["details"]["dropped"] == DEVICES[4] for r in rows)
    assert x.shape[0] == y.shape[0]


def test_fl_cli_runs_a_round_and_reports_status(mesh: DeviceMesh) -> None:
    """``securemesh fl run --wait`` and ``fl status`` (after the test above joined devices)."""
    env = {"SECUREMESH_PASSPHRASE": PASSPHRASE}
    cli_dir = str(mesh.dir("edge-a.cli"))
    out = cli(
        "fl", "run", "--to", "edge-a", "--data-dir", cli_dir, "--rounds", "1",
        "--clients-per-round", "4", "--zeros", str(MODEL.size), "--clip", "2",
        "--stage-timeout", "4", "--wait", "90", "-o", "json", env=env,
    )  # fmt: skip
    done = json.loads(out)
    assert done["started"] is True
    assert done["running"] is False
    assert done["last round"] == 3  # after the two rounds of the test above
    assert done["last aborted"] is None
    status = json.loads(
        cli("fl", "status", "--to", "edge-a", "--data-dir", cli_dir, "-o", "json", env=env)
    )
    assert status["rounds"] == 3
    assert len(status["last"]["participants"]) == 4
    assert len(status["last"]["model_hash"]) == 64


def _audited(mesh: DeviceMesh, kind: str) -> list[dict[str, Any]]:
    db = str(mesh.dir("cloud-1") / "audit.db")
    rows = json.loads(cli("audit", "query", "--db", db, "--kind", kind, "--format", "json"))
    assert isinstance(rows, list)
    return rows


def _wait_idle(mesh: DeviceMesh, rounds: int) -> None:
    def done() -> bool:
        fl = read_status(mesh.dir("edge-a"))["services"]["fl"]
        return fl["rounds"] >= rounds and not fl["running"]

    poll(done, f"{rounds} federated rounds in all", timeout=120)


def test_client_level_dp_over_the_bus_reports_epsilon_and_refuses_a_thin_round(
    mesh: DeviceMesh,
) -> None:
    """After the tests above (3 rounds): the vanished device comes back, two DP rounds
    with all five devices release a model and epsilon; it vanishes again, and a DP round
    with it in the cohort aborts (less noise than accounted), where secagg would go on."""
    gone = DEVICES[4]
    back = Device.connect(mesh.dir(gone), passphrase=PASSPHRASE, connect_timeout=20)
    mesh.devices[gone] = back
    back.join_federation("edge-a", _trainer(4), samples=60)  # a re-join replaces its key
    ops = mesh.devices["edge-a.ops"]
    init = MODEL.init(np.random.default_rng(0)).astype("<f8").tobytes()
    dp = {"dp_clip": 1.0, "noise_multiplier": 0.8, "delta": 1e-4}
    run = RunBody(rounds=2, clients_per_round=5, clip=2.0, stage_timeout=4.0, **dp)
    assert ops.request("edge-a", "fl.run", run, [init], timeout=20).json()["started"]
    _wait_idle(mesh, 5)
    status: dict[str, Any] = ops.request("edge-a", "fl.status", {}, timeout=10).json()
    last = status["last"]
    assert "aborted" not in last, last
    assert last["survivors"] == DEVICES
    expected = round(epsilon_for(0.8, 2, 1e-4), 4)
    assert status["epsilon"] == last["epsilon"] == expected
    assert status["delta"] == last["delta"] == 1e-4
    poll(lambda: len(_audited(mesh, "fl.round_finished")) >= 5, "DP rounds in the cloud log")
    rows = _audited(mesh, "fl.round_finished")
    assert [r["details"].get("epsilon") for r in rows[3:5]] == [
        round(epsilon_for(0.8, 1, 1e-4), 4),
        expected,
    ]
    assert all("epsilon" not in r["details"] for r in rows[:3])  # secagg without DP

    mesh.devices.pop(gone).close(drain_timeout=1.0)
    thin = RunBody(rounds=1, clients_per_round=5, clip=2.0, stage_timeout=2.0, **dp)
    assert ops.request("edge-a", "fl.run", thin, [init], timeout=20).json()["started"]
    _wait_idle(mesh, 6)
    status = ops.request("edge-a", "fl.status", {}, timeout=10).json()
    assert "noise shares arrived" in status["last"]["aborted"]
    assert status["epsilon"] == 0.0  # nothing released in this run
    poll(lambda: _audited(mesh, "fl.round_aborted"), "the abort in the cloud log")


def test_a_participant_without_the_operator_role_cannot_start_a_run(mesh: DeviceMesh) -> None:
    """``fl.run`` is narrowed to ``fl-operator``: a participant's request is refused
    (silently, like any unauthorized message) and no run starts."""
    before = read_status(mesh.dir("edge-a"))["services"]["fl"]["rounds"]
    init = np.zeros(5, dtype="<f8").tobytes()
    with pytest.raises(TimeoutError):
        mesh.devices[DEVICES[0]].request(
            "edge-a", "fl.run",
            RunBody(rounds=1, clients_per_round=2, clip=2.0, stage_timeout=4.0), [init],
            timeout=1.5,
        )  # fmt: skip
    fl = read_status(mesh.dir("edge-a"))["services"]["fl"]
    assert fl["rounds"] == before
    assert fl["running"] is False
