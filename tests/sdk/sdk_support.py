"""An in-process cloud + edge over real ZeroMQ on loopback, serving device enrollment and renewal.

The infrastructure runs on its own asyncio loop in a background thread
(:class:`LoopThread`), the way a separate daemon would; the SDK's Device runs
its own. Both share one injectable :class:`Clock` (real time plus an offset
that tests advance) so certificate lifetimes can be crossed without sleeping.

The edge holds a delegated authority (``end`` only) and serves

* ``enroll.request`` from first-contact token peers (EnrollmentServer over a
  TokenStore; TokenKeySync admits usable tokens' CURVE keys to its Directory);
* ``cert.renew`` from enrolled devices;
* ``app.reading`` and ``sensor.reading`` (one-way, queued), ``app.echo`` (request: echoes body and
  frames), ``app.fail`` (request: the handler raises) for the tests.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from securemesh.crypto import keystore
from securemesh.crypto.certs import (
    Authority,
    DelegatedAuthority,
    SignedCertificate,
    SignedRevocationList,
    Tier,
    TrustStore,
)
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.z85 import z85_decode
from securemesh.enroll import (
    MSG_CERT_RENEW,
    MSG_ENROLL_REQUEST,
    EnrollmentServer,
    EnrollRequest,
    RenewRequest,
)
from securemesh.enroll._store import TokenKeySync, TokenStore
from securemesh.node import Directory, MeshNode, NodeConfig, Reply, VerifiedMessage
from securemesh.policy import AllowTypes
from securemesh.transport import CurveKeyPair, ZmqTransport

T = TypeVar("T")

#: The name constraint of the test edge's delegated authority (device ids start with it).
EDGE_NAME_PREFIX = "dev-"
#: The ``enroll`` fixture (conftest.py): ``enroll("dev-1", data_dir=...) -> Enrollment``.
EnrollFn = Callable[..., Any]

FAST_KDF = keystore.UNSAFE_FAST_PARAMS
PASSPHRASE = "device-test-passphrase"
WAIT = 10.0


class Clock:
    """Real time plus an offset the test advances (shared by every node and device)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class LoopThread:
    """An asyncio loop in a daemon thread; ``call`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="infra-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Callable[[], T]) -> T:
        async def wrap() -> T:
            return fn()

        return self.call(wrap())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.loop.close()


def _keypair(identity: NodeIdentity) -> CurveKeyPair:
    return CurveKeyPair.from_secret(z85_decode(identity.curve_secret_z85()))


@dataclass
class Infra:
    loop: LoopThread
    clock: Clock
    authority: Authority
    cloud: MeshNode
    edge: MeshNode
    delegation: SignedCertificate
    store: TokenStore
    sync: TokenKeySync
    server: EnrollmentServer
    readings: queue.Queue[tuple[str, dict[str, Any], tuple[bytes, ...]]] = field(
        default_factory=queue.Queue
    )
    #: The edge refuses this many ``cert.renew`` requests (an unavailable authority).
    refuse_renewals: list[int] = field(default_factory=lambda: [0])

    def token(self, *, ttl_s: int = 600, roles: tuple[str, ...] = ("sensor",)) -> str:
        """A fresh one-time ``end`` token at the edge (and its key admitted by ZAP)."""

        def create() -> str:
            token = self.store.create(
                authority_id=self.authority.authority_id,
                root_key=self.authority.verify_key,
                server_key=self.edge.certificate.curve_key,
                server_id=self.edge.node_id,
                endpoint=str(self.edge.address),
                issuer=self.edge.node_id,
                tier=Tier.END,
                roles=roles,
                ttl_s=ttl_s,
                name_prefix=EDGE_NAME_PREFIX,
            )
            self.sync.refresh(self.edge.directory)
            return token.encode()

        return self.loop.run(create)

    def revoke(self, node_id: str) -> int:
        """Revoke ``node_id`` at the root and broadcast the list from the cloud."""
        signed = self.authority.revoke(node_ids=[node_id], now=self.clock())
        return self.loop.call(self.cloud.publish_revocation(signed.to_bytes()))

    def edge_request(
        self, dest: str, msg_type: str, body: dict[str, Any], *, timeout: float = WAIT
    ) -> VerifiedMessage:
        return self.loop.call(
            self.edge.request(dest, msg_type, json.dumps(body).encode(), timeout=timeout)
        )

    def close(self) -> None:
        try:
            self.loop.call(self.edge.stop(0))
            self.loop.call(self.cloud.stop(0))
        finally:
            self.loop.close()
            self.store.close()


def _config(node_id: str, tier: str, *, parent: MeshNode | None = None) -> NodeConfig:
    data: dict[str, Any] = {
        "node_id": node_id,
        "tier": tier,
        "listen": "tcp://127.0.0.1:*",
        "heartbeat_interval": 0.5,
        # every hop authorizes what it forwards: devices send app.*, the cloud dev.*
        "policy": {
            "allow": [
                {"types": ["app.*", "sensor.*", "peer.*"], "tiers": ["end"]},
                {"types": ["dev.*", "sensor.*"], "tiers": ["cloud"]},
            ]
        },
    }
    if parent is not None:
        data["parent"] = {
            "endpoint": str(parent.address),
            "curve_key": parent.certificate.curve_key.hex(),
        }
    return NodeConfig.model_validate(data)


def start_infra(tmp_path: Path, clock: Clock, *, device_lifetime_s: int = 3600) -> Infra:
    """Cloud (root authority) <- edge (delegated authority for ``end``), both listening."""
    loop = LoopThread()
    now = clock()
    authority = Authority.create("root", now=now - 60)
    cloud_id, edge_id = NodeIdentity.generate(), NodeIdentity.generate()
    long = 30 * 86400
    cloud_cert = authority.issue(
        "cloud-1", Tier.CLOUD, (), cloud_id.public(), lifetime_s=long, now=now, backdate_s=60
    )
    edge_cert = authority.issue(
        "edge-1", Tier.EDGE, (), edge_id.public(), lifetime_s=long, now=now, backdate_s=60
    )
    # The edge's namespace is "dev-*" (a name constraint; the default would be "edge-1.*").
    delegation = authority.delegate(
        edge_cert,
        tiers=(Tier.END,),
        lifetime_s=long,
        now=now,
        backdate_s=60,
        name_prefix=EDGE_NAME_PREFIX,
    )

    def trust() -> TrustStore:
        store = TrustStore({authority.authority_id: authority.verify_key})
        store.update_revocation_list(authority.revocation_list)
        return store

    token_store = TokenStore(tmp_path / "edge-tokens.db", clock=clock)
    refuse_renewals = [0]

    async def build() -> tuple[MeshNode, MeshNode, TokenKeySync, EnrollmentServer]:
        cloud_dir = Directory(trust(), clock=clock)
        cloud_dir.add_certificate(edge_cert)
        cloud = MeshNode(
            _config("cloud-1", "cloud"),
            cloud_id,
            cloud_cert,
            cloud_dir,
            ZmqTransport(_keypair(cloud_id), authenticator=cloud_dir.authenticate),
            clock=clock,
        )
        await cloud.start()
        edge_trust = trust()
        edge_trust.add_delegated_authority(delegation, now=now)
        edge_dir = Directory(edge_trust, clock=clock)
        edge_dir.add_certificate(cloud_cert)
        edge = MeshNode(
            _config("edge-1", "edge", parent=cloud),
            edge_id,
            edge_cert,
            edge_dir,
            ZmqTransport(_keypair(edge_id), authenticator=edge_dir.authenticate),
            clock=clock,
        )

        def current_list() -> SignedRevocationList:
            blob = edge.revocation_list_bytes
            if blob is None:
                return authority_initial_list
            return SignedRevocationList.from_bytes(blob)

        server = EnrollmentServer(
            DelegatedAuthority(delegation, edge_id.signer),
            token_store,
            server_certificate=edge_cert,
            lifetime_s=device_lifetime_s,
            trust=edge_trust,
            revocation_list=current_list,
            clock=clock,
        )
        sync = TokenKeySync(token_store)
        install_edge_services(edge, server, sync, delegation, refuse_renewals)
        await edge.start()
        await edge.wait_parent(WAIT)
        return cloud, edge, sync, server

    authority_initial_list = authority.revocation_list
    cloud, edge, sync, server = loop.call(build())
    infra = Infra(
        loop,
        clock,
        authority,
        cloud,
        edge,
        delegation,
        token_store,
        sync,
        server,
        refuse_renewals=refuse_renewals,
    )
    _install_app(infra)
    return infra


def install_edge_services(
    edge: MeshNode,
    server: EnrollmentServer,
    sync: TokenKeySync,
    delegation: SignedCertificate,
    refuse_renewals: list[int],
) -> None:
    """Serve ``enroll.request`` (first contact) and ``cert.renew`` on ``edge``."""

    def resolve(body: bytes) -> bytes:
        return EnrollRequest.model_validate_json(body, strict=True).verify_key

    def enroll(msg: VerifiedMessage) -> object:
        request = msg.body(EnrollRequest)
        try:
            reply = server.handle_enroll(
                request,
                self_signature_verified_with=request.verify_key,
                sender=msg.sender,
                peer_curve_key=msg.peer,
            )
        finally:
            sync.refresh(edge.directory)
        edge.directory.add_certificate(reply.certificate, intermediates=[delegation])
        return reply

    def renew(msg: VerifiedMessage) -> object:
        if refuse_renewals[0] > 0:
            refuse_renewals[0] -= 1
            raise RuntimeError("authority unavailable")
        reply = server.handle_renew(msg.body(RenewRequest), sender=msg.sender)
        edge.directory.add_certificate(reply.certificate, intermediates=[delegation])
        return reply

    edge.on_protocol(
        MSG_ENROLL_REQUEST,
        enroll,
        policy=AllowTypes(types=[MSG_ENROLL_REQUEST]),
        first_contact=resolve,
    )
    edge.on_protocol(
        MSG_CERT_RENEW, renew, policy=AllowTypes(types=[MSG_CERT_RENEW], tiers=["end"])
    )


def _install_app(infra: Infra) -> None:
    def reading(msg: VerifiedMessage) -> None:
        body = json.loads(msg.body_bytes)
        infra.readings.put((msg.sender, body, tuple(bytes(f) for f in msg.raw_frames)))

    def echo(msg: VerifiedMessage) -> Reply:
        cert = msg.certificate
        assert cert is not None
        body = json.loads(msg.body_bytes)
        body["_serial"] = cert.serial
        body["_sender"] = msg.sender
        return Reply(json.dumps(body).encode(), tuple(bytes(f) for f in msg.raw_frames))

    def fail(msg: VerifiedMessage) -> None:
        raise ValueError("edge handler failed")

    def register() -> None:
        infra.edge.on("app.reading", reading)
        infra.edge.on("sensor.reading", reading)
        infra.edge.on("app.echo", echo)
        infra.edge.on("app.fail", fail)

    infra.loop.run(register)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll a condition (a bounded wait, not a sleep used as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)
