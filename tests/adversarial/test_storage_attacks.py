"""Attacks on the storage service by a compromised device, against real daemon processes.

Issue 9 ("go beyond the list") for issue 11's storage. The operator mesh of
:mod:`harness` (cloud + edge daemons, set up with the CLI) also loads
``securemesh.storage:make_service`` with a 64 MiB node quota and a 16 MiB
per-sender quota. A *compromised device* — enrolled, its own valid keys, so
every envelope it sends verifies — then, from several threads at once for
:func:`~harness.attack_seconds`:

* floods ``storage.shard.put`` with shards whose bytes do not match their
  claimed address (small ones and 12 MiB ones, near the wire's frame limit);
* stores valid shards until its quota is exhausted, and keeps trying;
* sends manifests signed by another key, and manifests in the honest
  device's name.

The three assertions of the harness hold: every attack fails (nothing
mismatched is stored, the attacker's bytes stop at its quota, no forged
manifest is stored), the honest device's p99 round trip stays under 500 ms,
and the edge's RSS grows less than 128 MiB. Afterwards the honest device
still stores and reads an object on the same edge.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator

import pytest
from harness import (
    CLOUD_ID,
    EDGE_ID,
    PASSPHRASE,
    Mesh,
    RoundTrips,
    RssWatch,
    attack_seconds,
    operator_mesh,
)

from securemesh.crypto.identity import NodeIdentity
from securemesh.enroll import IDENTITY_FILE
from securemesh.errors import RemoteCallError, SecureMeshError
from securemesh.sdk import Device, storage_client
from securemesh.storage import Candidate, shard_hash, sign_manifest

pytestmark = pytest.mark.slow

STORAGE_POLICY = '\n[[policy.allow]]\ntypes = ["storage.*"]\ntiers = ["end", "edge", "cloud"]\n'
QUOTA_MB, OWNER_QUOTA_MB = 64, 16
OID = "ab" * 16


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    env = {
        "SECUREMESH_STORAGE_QUOTA_MB": str(QUOTA_MB),
        "SECUREMESH_STORAGE_OWNER_QUOTA_MB": str(OWNER_QUOTA_MB),
    }
    with operator_mesh(
        tmp_path_factory.mktemp("storage-attacks"),
        services=["securemesh.storage:make_service"],
        tables=STORAGE_POLICY,
        env=env,
    ) as built:
        yield built


def _storage(mesh: Mesh) -> dict[str, object]:
    entry = mesh.status("edge")["services"]["storage"]
    assert isinstance(entry, dict)
    return entry


class Attack:
    """The compromised device's request loops; outcomes counted by error code."""

    def __init__(self, device: Device, honest_id: str) -> None:
        self.device = device
        self.honest_id = honest_id
        self.outcomes: dict[str, int] = {}
        self.stored_bytes = 0
        self.forged_stored = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _count(self, key: str) -> None:
        with self._lock:
            self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def _put(self, data: bytes, claimed: bytes) -> None:
        body = {"object_id": OID, "hash": claimed.hex()}
        try:
            self.device.request(EDGE_ID, "storage.shard.put", body, [data], timeout=15)
        except RemoteCallError as exc:
            self._count(exc.code)
        except (SecureMeshError, TimeoutError) as exc:
            self._count(type(exc).__name__)
        else:
            self._count("stored")
            if shard_hash(data) == claimed:
                with self._lock:
                    self.stored_bytes += len(data)

    def mismatched(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            size = 12 * 1024 * 1024 if n % 8 == 0 else 64 * 1024
            data = os.urandom(size)
            self._put(data, os.urandom(32))

    def fill_quota(self) -> None:
        while not self._stop.is_set():
            data = os.urandom(1024 * 1024)
            self._put(data, shard_hash(data))

    def forged_manifests(self, manifest_blob: bytes, other_key_blob: bytes) -> None:
        while not self._stop.is_set():
            for ref, blob in (
                ({"owner": self.device.node_id, "name": "forged"}, other_key_blob),
                ({"owner": self.honest_id, "name": "victim"}, manifest_blob),
            ):
                try:
                    self.device.request(EDGE_ID, "storage.manifest.put", ref, [blob], timeout=15)
                except RemoteCallError as exc:
                    self._count(f"manifest:{exc.code}")
                except (SecureMeshError, TimeoutError) as exc:
                    self._count(f"manifest:{type(exc).__name__}")
                else:
                    with self._lock:
                        self.forged_stored += 1

    def run(self, seconds: float, manifest_blob: bytes, other_key_blob: bytes) -> None:
        threads = [
            threading.Thread(target=self.mismatched, daemon=True),
            threading.Thread(target=self.mismatched, daemon=True),
            threading.Thread(target=self.fill_quota, daemon=True),
            threading.Thread(target=self.fill_quota, daemon=True),
            threading.Thread(
                target=self.forged_manifests, args=(manifest_blob, other_key_blob), daemon=True
            ),
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._stop.wait(0.1)
        self._stop.set()
        for thread in threads:
            thread.join(60)


def test_a_compromised_device_cannot_flood_forge_or_fill_an_edge(mesh: Mesh) -> None:
    honest_dir = mesh.enroll_device("edge-1.honest")
    attacker_dir = mesh.enroll_device("edge-1.mallory")
    honest = mesh.connect(honest_dir)
    attacker = mesh.connect(attacker_dir)
    try:
        identity = NodeIdentity.load(honest_dir / IDENTITY_FILE, PASSPHRASE)
        client = storage_client(
            honest, identity, index=CLOUD_ID, k=1, n=1, segment_size=64 * 1024, timeout=15.0
        )
        nodes = [Candidate(EDGE_ID)]
        victim = asyncio.run(client.put("victim", os.urandom(100_000), nodes=nodes))
        # what the attacker can forge: the victim's manifest re-signed with its own key
        # (claimed in the victim's name), and one of its own names signed by a stranger
        mallory = NodeIdentity.load(attacker_dir / IDENTITY_FILE, PASSPHRASE)
        as_victim = sign_manifest(victim, mallory.signer)
        own = victim.model_copy(update={"owner": attacker.node_id, "name": "forged"})
        by_stranger = sign_manifest(own, NodeIdentity.generate().signer)
        attack = Attack(attacker, honest.node_id)
        with RoundTrips(honest) as rt, RssWatch(mesh.pid("edge")) as rss:
            attack.run(attack_seconds(short=4.0), as_victim, by_stranger)
        print(f"storage attack outcomes: {attack.outcomes}")
        # 1. the attack failed
        assert attack.outcomes.get("shard_corrupt", 0) > 0  # mismatched shards refused
        assert attack.outcomes.get("quota_exceeded", 0) > 0  # the quota stopped it
        assert attack.stored_bytes <= OWNER_QUOTA_MB * 1024 * 1024
        assert attack.forged_stored == 0
        assert {k for k in attack.outcomes if k.startswith("manifest:")} <= {
            "manifest:bad_auth", "manifest:unauthorized", "manifest:busy",
        }  # fmt: skip
        status = _storage(mesh)
        assert int(status["bytes"]) <= QUOTA_MB * 1024 * 1024  # type: ignore[call-overload]
        assert int(status["shards_refused"]) > 0  # type: ignore[call-overload]
        # 2. and 3. the honest device was served, the edge's memory stayed bounded
        rt.assert_p99()
        rss.assert_bounded()
        # the honest device still stores and reads on the edge the attacker filled
        data = os.urandom(200_000)
        asyncio.run(client.put("after", data, nodes=nodes))
        back, report = asyncio.run(client.get("after", nodes=nodes))
        assert back == data
        assert report.missing == []
        back, _ = asyncio.run(client.get("victim", nodes=nodes))
        assert len(back) == 100_000
    finally:
        attacker.close(drain_timeout=1.0)
        honest.close(drain_timeout=1.0)
