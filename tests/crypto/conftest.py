"""Fixtures for the securemesh.crypto tests: deterministic keys and a fixed clock."""

from __future__ import annotations

import pytest
from crypto_support import NOW, CountingBits, identity_from_byte

from securemesh.crypto.certs import Authority
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.signing import Ed25519Signer


@pytest.fixture
def authority() -> Authority:
    return Authority.create(
        "mesh-root",
        now=NOW,
        signer=Ed25519Signer.from_seed(bytes(range(32))),
        randbits=CountingBits(1000),
    )


@pytest.fixture
def device() -> NodeIdentity:
    return identity_from_byte(0x10)


@pytest.fixture
def edge() -> NodeIdentity:
    return identity_from_byte(0x40)
