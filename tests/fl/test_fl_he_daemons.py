"""The ``he`` FL mode over REAL daemons: cloud-1 <- edge-a (the ``fl`` coordinator, role
``he-keyholder``: the key owner), edge-b (``securemesh.he:make_service``: the aggregator).

Three SDK devices at edge-a join the federation; a device starts an ``he`` round
with ``fl.run``. The coordinator creates an unweighted ``sum`` job at edge-b for
the cohort and announces its id; each device trains, encrypts ``[n·clip(Δ) ‖ n]``
under the job's public context (``he_contribute``) and sends it to edge-b, which
adds ciphertexts without any secret key; the coordinator decrypts the sum only.
The test checks that the new model is the FedAvg of the devices' updates within
the CKKS bound, that the aggregator never saw a sample count (no weights in the
job: the counts are inside the ciphertexts), and the audit event. Then the CLI
runs an ``he`` round with client-level DP (epsilon reported), and a round whose
``clip · max_weight`` the preset cannot hold aborts with the reason.
"""

from __future__ import annotations

import json
import time
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

from securemesh.crypto.keystore import UNSAFE_FAST_PARAMS
from securemesh.fl import RunBody, epsilon_for, model_hash
from securemesh.he import get_preset
from securemesh.sdk import Device

pytestmark = pytest.mark.slow

PASSPHRASE = "fl-he-test-passphrase"
TOP = "status_interval = 0.2\nheartbeat_interval = 0.3\n"
FL_TOP = 'services = ["securemesh.fl:FLCoordinator"]\n'
HE_TOP = 'services = ["securemesh.he:make_service"]\n'
RULES = '\n[[policy.allow]]\ntypes = ["fl.*", "he.*"]\ntiers = ["end", "edge", "cloud"]\n'
DEVICES = [f"edge-a.d{i}" for i in range(3)]
SAMPLES = [10, 20, 40]
SIZE = 6
CLIP = 1.0


def _update(i: int) -> np.ndarray:
    return np.linspace(-0.5, 0.5, SIZE) * (i + 1) / 4


SEEN: dict[int, list[np.ndarray]] = {i: [] for i in range(len(DEVICES))}


def _trainer(i: int):  # type: ignore[no-untyped-def]
    def train(params: np.ndarray) -> tuple[np.ndarray, int]:
        SEEN[i].append(params.copy())  # round 2's global model is round 1's result
        return params + _update(i), SAMPLES[i]

    return train


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceMesh]:
    root = tmp_path_factory.mktemp("flhe")
    env = daemon_env(passphrase=PASSPHRASE)
    with reaped(env) as daemons:
        m = DeviceMesh(root, daemons)
        try:
            cloud = m.dir("cloud-1")
            init_cloud(cloud, PASSPHRASE, top=TOP, tables=RULES)
            daemons.run("cloud-1", cloud)
            enroll_edge(
                cloud, m.dir("edge-a"), "edge-a", PASSPHRASE, top=TOP + FL_TOP, tables=RULES,
                roles=("he-keyholder",),
            )  # fmt: skip
            enroll_edge(
                cloud, m.dir("edge-b"), "edge-b", PASSPHRASE, top=TOP + HE_TOP, tables=RULES
            )
            daemons.run("edge-a", m.dir("edge-a"))
            daemons.run("edge-b", m.dir("edge-b"))
            tokens = {
                name: end_token(m.dir("edge-a"), *([] if name in DEVICES else ["fl-operator"]))
                for name in [*DEVICES, "edge-a.ops"]
            }
            m.enroll_devices("edge-a", tokens, PASSPHRASE)
            yield m
        finally:
            m.close_devices()


def test_an_he_round_over_real_daemons_is_fedavg_and_hides_sample_counts(
    mesh: DeviceMesh,
) -> None:
    participants = {
        name: mesh.devices[name].join_federation("edge-a", _trainer(i), samples=SAMPLES[i])
        for i, name in enumerate(DEVICES)
    }
    init = np.zeros(SIZE)
    ops = mesh.devices["edge-a.ops"]
    run = RunBody(
        rounds=2, clients_per_round=3, mode="he", aggregator="edge-b", preset="fast-4096",
        clip=CLIP, max_weight=100, stage_timeout=30.0,
    )  # fmt: skip
    reply = ops.request("edge-a", "fl.run", run, [init.astype("<f8").tobytes()], timeout=20)
    assert reply.json()["started"] is True

    def done() -> bool:
        fl = read_status(mesh.dir("edge-a"))["services"]["fl"]
        return fl["rounds"] >= 2 and not fl["running"]

    try:
        poll(done, "two he rounds", timeout=120)
    except TimeoutError as exc:
        fl = read_status(mesh.dir("edge-a"))["services"]["fl"]
        seen = {n: (p.last_error, p.rounds_done) for n, p in participants.items()}
        raise AssertionError(f"{exc}: coordinator {fl}, devices {seen}") from exc
    status: dict[str, Any] = ops.request("edge-a", "fl.status", {}, timeout=10).json()
    last = status["last"]
    assert "aborted" not in last, last
    assert last["mode"] == "he"
    assert last["survivors"] == DEVICES
    assert all(p.rounds_done == 2 for p in participants.values())
    # round 1's model (what every device trained from in round 2) is the FedAvg of the
    # updates weighted by sample counts, within the CKKS bound divided by Σn
    expected = sum(n * _update(i) for i, n in enumerate(SAMPLES)) / sum(SAMPLES)
    bound = get_preset("fast-4096").error_bound(3) / sum(SAMPLES)
    for i in range(len(DEVICES)):
        assert np.array_equal(SEEN[i][0], init)
        assert np.max(np.abs(SEEN[i][1] - expected)) <= bound
    assert last["model_hash"] != model_hash(init)
    # the aggregator added unweighted contributions: it never saw a sample count
    cloud_db = str(mesh.dir("cloud-1") / "audit.db")

    def query(kind: str) -> list[dict[str, Any]]:
        out = cli("audit", "query", "--db", cloud_db, "--kind", kind, "--format", "json")
        rows = json.loads(out)
        assert isinstance(rows, list)
        return rows

    poll(lambda: len(query("he.job.contribution")) >= 6, "the HE contributions in the log")
    assert {r["details"]["weight"] for r in query("he.job.contribution")} == {1.0}
    poll(lambda: len(query("fl.round_finished")) >= 2, "the he rounds in the cloud log")
    assert [r["details"]["mode"] for r in query("fl.round_finished")] == ["he", "he"]


def test_fl_cli_runs_an_he_round_with_dp_and_a_preset_too_small_aborts(mesh: DeviceMesh) -> None:
    """``securemesh fl run --mode he`` with client-level DP (after the test above: 2 rounds),
    then a run whose ``clip · max_weight`` the preset cannot hold aborts with the reason."""
    cli_dir = mesh.dir("edge-a.cli")
    token = end_token(mesh.dir("edge-a"), "fl-operator")
    created = time.time()
    poll(lambda: read_status(mesh.dir("edge-a"))["written_at"] > created, "the token")
    Device.enroll(
        token, data_dir=cli_dir, node_id="edge-a.cli", passphrase=PASSPHRASE,
        timeout=20, kdf_params=UNSAFE_FAST_PARAMS,
    )  # fmt: skip
    env = {"SECUREMESH_PASSPHRASE": PASSPHRASE}
    out = cli(
        "fl", "run", "--to", "edge-a", "--data-dir", str(cli_dir), "--mode", "he",
        "--aggregator", "edge-b", "--preset", "fast-4096", "--clients-per-round", "3",
        "--zeros", str(SIZE), "--clip", "1", "--dp-clip", "1", "--noise-multiplier", "1.5",
        "--stage-timeout", "30", "--wait", "90", "-o", "json", env=env,
    )  # fmt: skip
    done = json.loads(out)
    assert done["last round"] == 3
    assert done["last aborted"] is None
    assert done["mode"] == "he"
    assert done["epsilon"] == round(epsilon_for(1.5, 1, 1e-5), 4)
    ops = mesh.devices["edge-a.ops"]
    huge = RunBody(
        rounds=1, clients_per_round=3, mode="he", aggregator="edge-b", preset="fast-4096",
        clip=1e6, max_weight=1_000_000, stage_timeout=30.0,
    )  # fmt: skip
    ops.request("edge-a", "fl.run", huge, [bytes(8 * SIZE)], timeout=20)
    poll(
        lambda: read_status(mesh.dir("edge-a"))["services"]["fl"]["rounds"] >= 4,
        "the refused round",
    )
    last = ops.request("edge-a", "fl.status", {}, timeout=10).json()["last"]
    assert "the HE job could not be created" in last["aborted"]
