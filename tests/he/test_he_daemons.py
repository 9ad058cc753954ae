"""HE jobs on REAL daemons: cloud-1 <- edge-a (the HE service: aggregator and scorer).

Two ``securemesh node run`` processes over CurveZMQ on loopback load
``services = ["securemesh.he:make_service"]``; SDK devices at edge-a: a key
owner (role ``he-keyholder``), three honest contributors and a compromised one.
Small presets (``fast-4096``: CKKS is CPU-heavy and these properties do not
depend on size). The tests check that:

1. a ``stats`` job over vectors longer than one ciphertext (chunked, sent in
   several messages) matches the plaintext sum, mean and variance within the
   stated bound; the aggregator received a context without a secret key (the
   bytes it kept are checked); a truncated and a garbage ciphertext from the
   compromised device are refused with a clear error and audited, and the
   job finishes with the honest contributors;
2. in a weighted ``mean`` job a foreign-context ciphertext and a wrong context
   digest are refused, and a contributor that sends half its chunks and drops
   out does not hold the job past its deadline (``he.job.dropout``);
3. only the owner gets the result; the job events are in the cloud log,
   which verifies (a node without ``he-keyholder`` cannot create a job:
   tests/adversarial/test_he_attacks.py);
4. linear scoring: the encrypted input's score under edge-a's plaintext model
   comes back to the input's owner, who alone decrypts it;
5. examples/he_aggregate.py averages two meters' readings, and the CLI
   (``securemesh he run`` in a real process, ``he contribute``) runs a job;
   a malformed value is one ``error:`` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal as ts
from daemon_support import (
    DeviceMesh,
    cli,
    daemon_env,
    end_token,
    enroll_edge,
    init_cloud,
    poll,
    reaped,
    verify_cloud_log,
)

from securemesh.cli import main
from securemesh.errors import RemoteCallError
from securemesh.he import (
    Contribution,
    HeJob,
    Preset,
    SecretContext,
    context_has_secret_key,
    encrypt_vector,
    encrypted_weighted_sum,
    fetch_job,
    get_preset,
    score_remote,
    send_chunks,
)
from securemesh.sdk import Device, DeviceRequester, he_contribute, he_key_owner

pytestmark = pytest.mark.slow

PASSPHRASE = "he-test-passphrase"
ENV = {"SECUREMESH_PASSPHRASE": PASSPHRASE}
FAST = get_preset("fast-4096")
TOP = 'status_interval = 0.2\nheartbeat_interval = 0.5\nservices = ["securemesh.he:make_service"]\n'
POLICY = '\n[[policy.allow]]\ntypes = ["he.*"]\ntiers = ["end", "edge", "cloud"]\n'
HONEST = ("edge-a.c1", "edge-a.c2", "edge-a.c3")
OWNER = "edge-a.owner"
BAD = "edge-a.bad"
MODEL = {"risk": {"weights": [0.5, -0.25, 1.0, 0.125], "bias": 0.75}}


def query(cloud: Path, kind: str) -> list[dict[str, Any]]:
    out = cli("audit", "query", "--db", str(cloud / "audit.db"), "--kind", kind, "--format", "json")
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceMesh]:
    root = tmp_path_factory.mktemp("he")
    models = root / "models.json"
    models.write_text(json.dumps(MODEL))
    env = daemon_env(passphrase=PASSPHRASE)
    env["SECUREMESH_HE_MODELS"] = str(models)
    with reaped(env) as daemons:
        m = DeviceMesh(root, daemons)
        try:
            cloud = m.dir("cloud-1")
            init_cloud(cloud, PASSPHRASE, top=TOP, tables=POLICY)
            daemons.run("cloud-1", cloud)
            enroll_edge(cloud, m.dir("edge-a"), "edge-a", PASSPHRASE, top=TOP, tables=POLICY)
            daemons.run("edge-a", m.dir("edge-a"))
            roles = {OWNER: ["he-keyholder"], BAD: [], **{c: [] for c in HONEST}}
            tokens = {name: end_token(m.dir("edge-a"), *r) for name, r in roles.items()}
            m.enroll_devices("edge-a", tokens, PASSPHRASE, connect_timeout=30)
            yield m
        finally:
            m.close_devices()


def send_raw(dev: Device, job_id: str, digest: str, frames: list[bytes], first: int = 0) -> None:
    head = Contribution(job_id=job_id, context_digest=digest, first=first)
    asyncio.run(send_chunks(DeviceRequester(dev), "edge-a", head, frames, frames_per_message=1))


def test_a_stats_job_matches_plaintext_and_survives_bad_ciphertexts(mesh: DeviceMesh) -> None:
    owner = he_key_owner(mesh.devices[OWNER], "edge-a")
    length = FAST.slots + 100  # x ‖ x² is three ciphertexts: sent in three messages
    job = asyncio.run(
        owner.create_job("stats", length=length, max_contributors=3, timeout=60, preset=FAST)
    )
    assert job.info.chunks == [FAST.slots, FAST.slots, 2 * 100]
    # the aggregator holds the exact public context bytes it received: no secret key
    kept = (mesh.dir("edge-a") / "services" / "he" / "jobs" / f"{job.id}.context").read_bytes()
    assert kept == job.secret.public_bytes()
    assert not context_has_secret_key(kept)
    assert not ts.context_from(kept).has_secret_key()

    bad = mesh.devices[BAD]
    _, blob = asyncio.run(fetch_job(DeviceRequester(bad), "edge-a", job.id))
    good = encrypt_vector(SecretContext(FAST).public, np.zeros(FAST.slots))[0]
    with pytest.raises(RemoteCallError) as truncated:
        send_raw(bad, job.id, job.info.context_digest, [good[: len(good) // 3]])
    assert truncated.value.code == "malformed"
    assert "truncated" in truncated.value.detail
    with pytest.raises(RemoteCallError) as again:  # the rejection sticks for this job
        send_raw(bad, job.id, job.info.context_digest, [b"\x01" * len(good)])
    assert "rejected" in again.value.detail

    rng = np.random.default_rng(1)
    xs = {name: rng.uniform(-1, 1, length) for name in HONEST}
    for name, x in xs.items():
        accepted = he_contribute(mesh.devices[name], "edge-a", job.id, x.tolist())
        assert accepted.complete
    result = asyncio.run(owner.result(job, wait=60))
    data = np.stack(list(xs.values()))
    assert result.count == 3
    assert sorted(result.contributors) == sorted(HONEST)
    assert result.rejected == {BAD: "malformed"}
    assert np.max(np.abs(result.total - data.sum(axis=0))) <= result.error_bound
    assert np.max(np.abs(result.mean - data.mean(axis=0))) <= result.error_bound / 3
    assert result.variance is not None
    assert np.max(np.abs(result.variance - data.var(axis=0))) <= 2 * result.error_bound
    assert blob == kept


def test_foreign_ciphertexts_are_refused_and_a_dropout_does_not_stall(mesh: DeviceMesh) -> None:
    owner = he_key_owner(mesh.devices[OWNER], "edge-a")
    deadline = 4.0
    job = asyncio.run(
        owner.create_job(
            "mean", length=FAST.slots + 1, max_contributors=4, timeout=deadline, preset=FAST,
            weighted=True, max_weight=10.0, max_abs_value=1.0,
        )
    )  # fmt: skip
    started = time.monotonic()
    digest = job.info.context_digest
    other = Preset("other-4096", 4096, (40, 20, 20, 20), 20).validate()
    foreign = encrypt_vector(SecretContext(other).public, np.zeros(FAST.slots))[0]
    with pytest.raises(RemoteCallError) as refused:
        send_raw(mesh.devices[BAD], job.id, digest, [foreign])
    assert refused.value.code == "foreign_ciphertext"
    right = encrypt_vector(job.secret.public, np.zeros(FAST.slots))[0]
    with pytest.raises(RemoteCallError) as digest_refused:  # right bytes, wrong context claim
        send_raw(mesh.devices["edge-a.c3"], job.id, "ab" * 32, [right])
    assert digest_refused.value.code == "foreign_ciphertext"

    x1, x2 = np.full(FAST.slots + 1, 0.5), np.linspace(-1, 1, FAST.slots + 1)
    he_contribute(mesh.devices["edge-a.c1"], "edge-a", job.id, x1.tolist(), weight=2.0)
    he_contribute(mesh.devices["edge-a.c2"], "edge-a", job.id, x2.tolist(), weight=6.0)
    # c3 was rejected above; the owner's device sends half of a contribution and drops out
    send_raw(mesh.devices[OWNER], job.id, digest, [right])
    result = asyncio.run(owner.result(job, wait=60))
    assert time.monotonic() - started < deadline + 15  # the deadline, not the dropout, ended it
    assert result.count == 2
    assert result.weight_sum == 8.0
    assert result.dropped == [OWNER]
    assert result.rejected == {BAD: "foreign_ciphertext", "edge-a.c3": "foreign_ciphertext"}
    want = (2.0 * x1 + 6.0 * x2) / 8.0
    assert np.max(np.abs(result.mean - want)) <= result.error_bound / 8.0


def test_roles_results_and_the_audit_trail(mesh: DeviceMesh) -> None:
    # (a device without he-keyholder cannot create a job: tests/adversarial/test_he_attacks.py)
    not_owner = he_key_owner(mesh.devices["edge-a.c1"], "edge-a")
    owner = he_key_owner(mesh.devices[OWNER], "edge-a")
    job = asyncio.run(
        owner.create_job("sum", length=4, max_contributors=2, timeout=30, preset=FAST)
    )
    with pytest.raises(RemoteCallError) as other:
        asyncio.run(not_owner.poll(job))
    assert other.value.code == "unauthorized"
    cloud = mesh.dir("cloud-1")
    kinds = ("he.job.created", "he.job.done", "he.contribution.rejected", "he.job.dropout")
    poll(lambda: all(query(cloud, k) for k in kinds), "the HE job events in the cloud log")
    rejected = query(cloud, "he.contribution.rejected")
    assert {r["details"]["reason"] for r in rejected} >= {"malformed", "foreign_ciphertext"}
    verify_cloud_log(cloud)


def test_linear_scoring_returns_the_score_to_the_inputs_owner(mesh: DeviceMesh) -> None:
    secret = SecretContext(get_preset("score-4096"), galois_keys=True)
    x = [1.0, 2.0, -1.0, 4.0]
    got = asyncio.run(
        score_remote(DeviceRequester(mesh.devices["edge-a.c2"]), "edge-a", secret, "risk", x)
    )
    model = MODEL["risk"]
    want = float(np.dot(x, model["weights"])) + model["bias"]  # type: ignore[call-overload]
    assert abs(got - want) <= secret.preset.score_error_bound(1.875)


def test_the_energy_example_averages_without_revealing_readings(mesh: DeviceMesh) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    import he_aggregate  # examples/he_aggregate.py

    job = he_aggregate.start_job(mesh.devices[OWNER], "edge-a", 2, timeout=60)
    a = [0.5 + 0.1 * h for h in range(24)]
    b = [1.5 - 0.05 * h for h in range(24)]
    he_aggregate.run_meter(mesh.devices["edge-a.c1"], "edge-a", job.id, a)
    he_aggregate.run_meter(mesh.devices["edge-a.c2"], "edge-a", job.id, b)
    mean = he_aggregate.finish_job(mesh.devices[OWNER], "edge-a", job, timeout=60)
    assert np.max(np.abs(np.array(mean) - (np.array(a) + np.array(b)) / 2)) < 1e-5


def test_the_fl_aggregation_call_returns_the_weighted_sum(mesh: DeviceMesh) -> None:
    owner = he_key_owner(mesh.devices[OWNER], "edge-a")
    updates = {"edge-a.c1": (np.full(10, 0.2), 30.0), "edge-a.c2": (np.linspace(0, 1, 10), 10.0)}

    async def ready(job: HeJob) -> None:  # an FL round tells its participants the job id
        for name, (delta, n) in updates.items():
            await asyncio.to_thread(
                he_contribute, mesh.devices[name], "edge-a", job.id, delta.tolist(), weight=n
            )

    result = asyncio.run(
        encrypted_weighted_sum(
            owner, length=10, contributors=list(updates), timeout=60, ready=ready,
            max_weight=100.0, preset="fast-4096",
        )
    )  # fmt: skip
    want = sum(n * delta for delta, n in updates.values())
    assert result.weight_sum == 40.0
    assert np.max(np.abs(result.total - want)) <= result.error_bound


def test_the_cli_runs_a_job_and_contributes(mesh: DeviceMesh) -> None:
    # the last test: the CLI connects the owner and two devices itself
    for name in (OWNER, "edge-a.c3", BAD):
        mesh.devices.pop(name).close(drain_timeout=1.0)
    env = daemon_env(passphrase=PASSPHRASE)
    owner = subprocess.Popen(
        [sys.executable, "-m", "securemesh", "he", "run", "--data-dir",
         str(mesh.dir(OWNER)), "--aggregator", "edge-a", "--op", "sum", "--length", "3",
         "--contributors", "2", "--timeout", "60", "--preset", "fast-4096", "-o", "json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert owner.stderr is not None
        first = ""
        for line in owner.stderr:  # "job <id>", printed as soon as the job exists (after logs)
            if line.startswith("job "):
                first = line
                break
        assert first, "the owner printed no job id"
        job_id = first.split()[1]
        meter = ["--aggregator", "edge-a", "--job", job_id, "-o", "json"]
        dirs = [str(mesh.dir(m)) for m in ("edge-a.c3", BAD)]
        out = io.StringIO()
        err = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            bad = main(["he", "contribute", "--data-dir", dirs[0], *meter, "--values", "1,x"])
        assert bad != 0
        assert err.getvalue().startswith("error:")
        cli("he", "contribute", "--data-dir", dirs[0], *meter, "--values", "1,2,3", env=ENV)
        cli("he", "contribute", "--data-dir", dirs[1], *meter, "--values", "0.5,0.5,0.5", env=ENV)
        stdout, stderr = owner.communicate(timeout=120)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    assert owner.returncode == 0, stderr
    doc = json.loads(stdout)
    assert doc["count"] == 2
    assert np.max(np.abs(np.array(doc["total"]) - [1.5, 2.5, 3.5])) <= doc["error_bound"]
