from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from securemesh.crypto import Authority, NodeIdentity, SignedCertificate, Tier
from securemesh.enroll import EnrollmentAudit, EnrollmentServer, JoinToken
from securemesh.enroll._store import TokenStore

NOW = 1_800_000_000


@dataclass
class Mesh:
    authority: Authority
    cloud: NodeIdentity
    cloud_cert: SignedCertificate
    store: TokenStore
    server: EnrollmentServer
    audits: list[EnrollmentAudit]

    def token(
        self,
        tier: str = "end",
        roles: tuple[str, ...] = ("sensor",),
        ttl_s: int = 3600,
        *,
        delegate: bool = False,
        now: int = NOW,
    ) -> JoinToken:
        return self.store.create(
            authority_id=self.authority.authority_id,
            root_key=self.authority.verify_key,
            server_key=self.cloud.curve_public,
            server_id="cloud-1",
            endpoint="tcp://127.0.0.1:7100",
            issuer=self.authority.authority_id,
            tier=tier,
            roles=roles,
            ttl_s=ttl_s,
            delegate=delegate,
            now=now,
        )


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    authority = Authority.create("mesh", now=NOW - 10)
    cloud = NodeIdentity.generate()
    cloud_cert = authority.issue(
        "cloud-1", Tier.CLOUD, (), cloud.public(), lifetime_s=30 * 86400, now=NOW - 10
    )
    store = TokenStore(tmp_path / "tokens.db", clock=lambda: NOW)
    audits: list[EnrollmentAudit] = []
    server = EnrollmentServer(
        authority,
        store,
        server_certificate=cloud_cert,
        lifetime_s=3600,
        clock=lambda: NOW,
        audit_hook=audits.append,
    )
    yield Mesh(authority, cloud, cloud_cert, store, server, audits)
    store.close()
