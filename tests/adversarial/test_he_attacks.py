"""Attacks on the HE service (docs/he.md), against real daemon processes.

The operator-built mesh of :mod:`harness` with the HE service on both daemons
(``securemesh.he:make_service``, ``he.*`` allowed). A key owner device
(``he-keyholder``) runs a job at the edge with two honest contributors while
a *compromised device* — enrolled legitimately, its keys now the attacker's —
sends:

1. garbage, truncated, oversized (within the node's frame limit but far
   above any ciphertext of the preset) and foreign-context ciphertexts:
   each is refused with a clear error before TenSEAL sees it (or by TenSEAL
   inside ``try``), audited, and the edge keeps serving;
2. a flood of contribution parts and job look-ups for :func:`attack_seconds`:
   after its first rejection every part is refused at once (no native work),
   the edge's RSS stays bounded, an honest device's p99 round trip stays under
   the harness limit, and the job completes with the honest contributors,
   matching plaintext within the stated bound;
3. it cannot create a job (no ``he-keyholder``) nor read the owner's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from harness import (
    EDGE_ID,
    FAST_KDF,
    PASSPHRASE,
    Mesh,
    RoundTrips,
    RssWatch,
    attack_seconds,
    operator_mesh,
)

from securemesh.errors import RemoteCallError
from securemesh.he import (
    Contribution,
    JobSpec,
    Preset,
    SecretContext,
    encrypt_vector,
    get_preset,
)
from securemesh.sdk import Device, DeviceRequester, he_contribute, he_key_owner

pytestmark = pytest.mark.slow

FAST = get_preset("fast-4096")
HE_TABLES = '\n[[policy.allow]]\ntypes = ["he.*"]\ntiers = ["end", "edge", "cloud"]\n'


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with operator_mesh(
        tmp_path_factory.mktemp("adversarial-he"),
        services=["securemesh.he:make_service"],
        tables=HE_TABLES,
    ) as built:
        yield built


@pytest.fixture(scope="module")
def devices(mesh: Mesh) -> Iterator[dict[str, Device]]:
    owner_dir = mesh.root / "devices" / "edge-1.he-owner"
    Device.enroll(
        mesh.token(roles="he-keyholder"), data_dir=owner_dir, node_id="edge-1.he-owner",
        passphrase=PASSPHRASE, kdf_params=FAST_KDF, timeout=30,
    )  # fmt: skip
    dirs = {"owner": owner_dir}
    for name in ("honest-1", "honest-2", "mallory", "bystander"):
        dirs[name] = mesh.enroll_device(f"edge-1.{name}")
    connected: dict[str, Device] = {}
    try:
        for name, data_dir in dirs.items():
            connected[name] = mesh.connect(data_dir)
        yield connected
    finally:
        for dev in connected.values():
            dev.close(drain_timeout=1.0)


def part(dev: Device, job_id: str, digest: str, frames: list[bytes], first: int = 0) -> None:
    body = Contribution(job_id=job_id, context_digest=digest, first=first)
    asyncio.run(DeviceRequester(dev).request(EDGE_ID, "he.contribute", body, frames, timeout=10))


def test_bad_ciphertexts_and_a_flood_leave_the_job_and_the_edge_serving(
    mesh: Mesh, devices: dict[str, Device]
) -> None:
    owner = he_key_owner(devices["owner"], EDGE_ID)
    job = asyncio.run(
        owner.create_job("mean", length=300, max_contributors=2, timeout=60, preset=FAST)
    )
    digest = job.info.context_digest
    mallory = devices["mallory"]
    real = encrypt_vector(job.secret.public, np.zeros(300))[0]
    other = Preset("other-4096", 4096, (40, 20, 20, 20), 20).validate()
    foreign = encrypt_vector(SecretContext(other).public, np.zeros(300))[0]
    attacks = {
        "garbage": b"\xa5" * len(real),
        "truncated": real[: len(real) - 100],
        "huge": real + bytes(2 * 1024 * 1024),
        "foreign": foreign,
    }
    codes = {}
    for i, (name, frame) in enumerate(attacks.items()):
        # each attack from a fresh job so that the first refusal is the one measured
        probe = asyncio.run(
            owner.create_job("sum", length=300, max_contributors=2, timeout=30, preset=FAST)
        )
        with pytest.raises(RemoteCallError) as refused:
            part(mallory, probe.id, probe.info.context_digest, [frame])
        codes[name] = refused.value.code
        assert refused.value.detail, f"attack {i} ({name}) got no clear error"
    assert codes == {
        "garbage": "malformed",
        "truncated": "malformed",
        "huge": "oversize",
        "foreign": "foreign_ciphertext",
    }

    # the flood: parts of a rejected contribution and look-ups, as fast as the device goes
    with pytest.raises(RemoteCallError):
        part(mallory, job.id, digest, [attacks["garbage"]])
    stop = threading.Event()
    refused_fast: list[float] = []

    def flood() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            with contextlib.suppress(RemoteCallError, TimeoutError):
                part(mallory, job.id, digest, [real], first=0)
            refused_fast.append(time.perf_counter() - start)

    flooder = threading.Thread(target=flood, daemon=True)
    with RssWatch(mesh.pid("edge")) as rss, RoundTrips(devices["bystander"]) as rt:
        flooder.start()
        xs = [np.linspace(-1, 1, 300), np.full(300, 0.25)]
        for name, x in zip(("honest-1", "honest-2"), xs, strict=True):
            he_contribute(devices[name], EDGE_ID, job.id, x.tolist())
        time.sleep(attack_seconds())  # the attack's duration (not a readiness wait)
        stop.set()
        flooder.join(15)
    rt.assert_p99()
    rss.assert_bounded()
    assert len(refused_fast) >= 5
    result = asyncio.run(owner.result(job, wait=60))
    assert sorted(result.contributors) == ["edge-1.honest-1", "edge-1.honest-2"]
    assert result.rejected == {"edge-1.mallory": "malformed"}
    assert np.max(np.abs(result.mean - (xs[0] + xs[1]) / 2)) <= result.error_bound / 2
    status = mesh.status("edge")["services"]["he"]
    assert status["rejected"] >= 5


def test_a_compromised_device_cannot_create_jobs_nor_read_results(
    mesh: Mesh, devices: dict[str, Device]
) -> None:
    owner = he_key_owner(devices["owner"], EDGE_ID)
    job = asyncio.run(
        owner.create_job("sum", length=3, max_contributors=2, timeout=30, preset=FAST)
    )
    mallory = he_key_owner(devices["mallory"], EDGE_ID)
    mallory.request_timeout = 1.5  # a refusal by policy gets no reply
    with pytest.raises(RemoteCallError) as denied:
        asyncio.run(mallory.poll(job))
    assert denied.value.code == "unauthorized"
    with pytest.raises((RemoteCallError, TimeoutError)):  # refused by the role: no reply
        asyncio.run(mallory.create_job("sum", length=3, max_contributors=2, timeout=30))
    # a context with a secret key is refused even from a key owner (the raw request)
    secret_blob = job.secret._ctx.serialize(save_secret_key=True)
    body = JobSpec(
        job_id="ab" * 16, op="sum", preset=FAST.name, length=3, max_contributors=2,
        precision=1.0, deadline=time.time() + 30,
    )  # fmt: skip
    with pytest.raises(RemoteCallError) as leaked:
        asyncio.run(
            DeviceRequester(devices["owner"]).request(
                EDGE_ID, "he.job.create", body, [secret_blob], timeout=10
            )
        )
    assert "secret key" in leaked.value.detail
    assert not (
        Path(mesh.dir("edge")) / "services" / "he" / "jobs" / f"{'ab' * 16}.context"
    ).exists()
