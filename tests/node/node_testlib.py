"""Shared helpers for the node tests: an authority, members with certificates, small meshes.

Every node gets its own TrustStore (as separate processes would) and a
transport whose authenticator is its Directory (default deny). The same
builders work over the in-memory transport and over ZeroMQ on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from securemesh.crypto import Authority, NodeIdentity, SignedCertificate, TrustStore
from securemesh.crypto.z85 import z85_decode
from securemesh.node import Directory, MeshNode, NodeConfig, Rejection
from securemesh.transport import CurveKeyPair, MemoryNetwork, MemoryTransport, Transport

WAIT = 5.0
TEST_TIMEOUT = 60.0

APP_POLICY: dict[str, Any] = {"allow": [{"types": ["app.*"]}]}


def run(coro: Coroutine[Any, Any, None], timeout: float = TEST_TIMEOUT) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout)

    asyncio.run(bounded())


def curve_keypair(identity: NodeIdentity) -> CurveKeyPair:
    return CurveKeyPair.from_secret(z85_decode(identity.curve_secret_z85()))


@dataclass
class Member:
    node_id: str
    tier: str
    identity: NodeIdentity
    cert: SignedCertificate
    roles: tuple[str, ...] = ()

    @property
    def keypair(self) -> CurveKeyPair:
        return curve_keypair(self.identity)


@dataclass
class Fixture:
    """One mesh authority that issues certificates to test members."""

    now: float = field(default_factory=time.time)
    authority: Authority = field(init=False)

    def __post_init__(self) -> None:
        self.authority = Authority.create("root", now=self.now - 60)

    def member(
        self,
        node_id: str,
        tier: str,
        roles: Iterable[str] = (),
        *,
        lifetime_s: int = 3600,
        issued_at: float | None = None,
    ) -> Member:
        identity = NodeIdentity.generate()
        cert = self.authority.issue(
            node_id,
            tier,
            roles,
            identity.public(),
            lifetime_s=lifetime_s,
            now=self.now if issued_at is None else issued_at,
            backdate_s=60,
        )
        return Member(node_id, tier, identity, cert, tuple(roles))

    def trust(self) -> TrustStore:
        trust = TrustStore({self.authority.authority_id: self.authority.verify_key})
        trust.update_revocation_list(self.authority.revocation_list)
        return trust


TransportFactory = Callable[[CurveKeyPair, Directory], Transport]


def memory_factory(network: MemoryNetwork | None = None) -> TransportFactory:
    net = network or MemoryNetwork()

    def make(keypair: CurveKeyPair, directory: Directory) -> Transport:
        return MemoryTransport(keypair, network=net, authenticator=directory.authenticate)

    return make


def zmq_factory() -> TransportFactory:
    from securemesh.transport import ZmqTransport

    def make(keypair: CurveKeyPair, directory: Directory) -> Transport:
        return ZmqTransport(keypair, authenticator=directory.authenticate)

    return make


@dataclass
class Built:
    node: MeshNode
    member: Member
    rejections: list[Rejection]
    rejected: asyncio.Event


def build_node(
    fixture: Fixture,
    member: Member,
    factory: TransportFactory,
    *,
    listen: str | None = None,
    parent: MeshNode | None = None,
    parent_endpoint: tuple[str, bytes] | None = None,
    known: Iterable[Member] = (),
    policy: dict[str, Any] | None = None,
    clock: Callable[[], float] | None = None,
    authority_certificate: Any = None,
    route_evidence_restore: dict[str, int] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    **config: Any,
) -> Built:
    clk = clock or time.time
    directory = Directory(fixture.trust(), clock=clk)
    for other in known:
        directory.add_certificate(other.cert)
    parent_cfg = None
    if parent_endpoint is not None:
        parent_cfg = {"endpoint": parent_endpoint[0], "curve_key": parent_endpoint[1].hex()}
    if parent is not None:
        assert parent.address is not None
        parent_cfg = {
            "endpoint": parent.address,
            "curve_key": parent.certificate.curve_key.hex(),
        }
    cfg = NodeConfig.model_validate(
        {
            "node_id": member.node_id,
            "tier": member.tier,
            "listen": listen,
            "parent": parent_cfg,
            "policy": policy if policy is not None else APP_POLICY,
            **config,
        }
    )
    transport = factory(member.keypair, directory)
    rejections: list[Rejection] = []
    event = asyncio.Event()

    def hook(rejection: Rejection) -> None:
        rejections.append(rejection)
        event.set()

    node = MeshNode(
        cfg,
        member.identity,
        member.cert,
        directory,
        transport,
        clock=clk,
        audit_hook=hook,
        authority_certificate=authority_certificate,
        route_evidence_restore=route_evidence_restore,
        monotonic=monotonic,
    )
    return Built(node, member, rejections, event)


async def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll a condition on the event loop (no fixed sleeps as synchronisation)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.005)


def write_data_dir(
    fx: Fixture,
    member: Member,
    path: Any,
    *,
    listen: str | None = None,
    parent: tuple[str, bytes] | None = None,
    peers: Iterable[Member] = (),
    passphrase: str = "test-passphrase",
    extra_toml: str = "",
) -> Any:
    """Lay out a daemon data directory and node.toml; return the node.toml path."""
    from pathlib import Path

    from securemesh.crypto import keystore
    from securemesh.node._daemon import write_trust_file

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    member.identity.save(root / "identity.key", passphrase, params=keystore.UNSAFE_FAST_PARAMS)
    (root / "node.cert").write_bytes(member.cert.to_bytes())
    write_trust_file(root / "trust.json", {"root": fx.authority.verify_key})
    (root / "revocation.list").write_bytes(fx.authority.revocation_list.to_bytes())
    (root / "passphrase").write_text(passphrase + "\n")
    peer_dir = root / "peers"
    peer_dir.mkdir(exist_ok=True)
    for p in peers:
        (peer_dir / f"{p.node_id}.cert").write_bytes(p.cert.to_bytes())
    lines = [
        f'node_id = "{member.node_id}"',
        f'tier = "{member.tier}"',
        f'data_dir = "{root}"',
        f'passphrase_file = "{root / "passphrase"}"',
        "status_interval = 0.2",
        "heartbeat_interval = 0.5",
        'log_level = "info"',
    ]
    if listen is not None:
        lines.append(f'listen = "{listen}"')
    lines.append(extra_toml)
    if parent is not None:
        lines += ["[parent]", f'endpoint = "{parent[0]}"', f'curve_key = "{parent[1].hex()}"']
    lines += ["[[policy.allow]]", 'types = ["app.*"]']
    toml = root / "node.toml"
    toml.write_text("\n".join(lines) + "\n")
    return toml
