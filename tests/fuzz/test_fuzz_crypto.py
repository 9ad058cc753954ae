"""Crypto decoders: certificates (with delegation chains), revocation lists, sealed blobs, boxes.

Already fuzzed elsewhere (not repeated): random bytes into a certificate,
a few set/insert/delete edits of one (tests/crypto/test_crypto_certs.py:
"fails cleanly" only); random bytes into the KEM key/ciphertext decoders.
Here: a mutated signed certificate or revocation list never *verifies* unless
it is byte-identical (signatures cover every byte that matters); unsigned
revocation-list bytes decode strictly (sorted, bounded, canonical round
trip); AEAD blobs and sealed boxes open only unchanged.
"""

from __future__ import annotations

from fuzz_support import fuzz, mutated, run
from hypothesis import given
from hypothesis import strategies as st

from securemesh.crypto import aead, boxes
from securemesh.crypto.certs import (
    Authority,
    RevocationList,
    SignedCertificate,
    SignedRevocationList,
    Tier,
    verify_certificate,
    verify_revocation_list,
)
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.shamir import SHARE_SIZE, Share
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import AuthenticationError, CertificateError, DecodeError

NOW = 1_700_000_000
DAY = 86_400
AUTHORITY = Authority.create("mesh-root", now=NOW, signer=Ed25519Signer.from_seed(bytes(32)))
DEVICE = NodeIdentity.from_seeds(bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32)
EDGE = NodeIdentity.from_seeds(bytes([4]) * 32, bytes([5]) * 32, bytes([6]) * 32)
CERT = AUTHORITY.issue(
    "dev-01", Tier.END, ["sensor", "fl-participant"], DEVICE.public(), lifetime_s=DAY, now=NOW
).to_bytes()
EDGE_CERT = AUTHORITY.delegate(
    AUTHORITY.issue("edge-1", Tier.EDGE, ["storage"], EDGE.public(), lifetime_s=DAY, now=NOW),
    lifetime_s=DAY,
    now=NOW,
).to_bytes()
REVOKED = AUTHORITY.revoke("dev-99", serials=[7, 9], now=NOW).to_bytes()
TRUST = AUTHORITY.trust_store()


def _delegated_cert() -> bytes:
    from securemesh.crypto.certs import DelegatedAuthority

    delegate = DelegatedAuthority(SignedCertificate.from_bytes(EDGE_CERT), EDGE.signer)
    return delegate.issue(
        "edge-1.dev-2", Tier.END, ["sensor"], DEVICE.public(), lifetime_s=DAY, now=NOW
    ).to_bytes()


DELEGATED = _delegated_cert()


@fuzz(100)
@given(st.one_of(mutated(CERT), mutated(EDGE_CERT), st.binary(max_size=500)))
def test_a_mutated_certificate_never_verifies(blob: bytes) -> None:
    cert = run(
        "crypto.verify_certificate",
        lambda: verify_certificate(blob, trust=TRUST, now=NOW + 1),
        CertificateError,
    )
    if cert is not None:
        assert blob in (CERT, EDGE_CERT)


@fuzz(100)
@given(st.one_of(mutated(DELEGATED), mutated(EDGE_CERT)), st.booleans())
def test_a_mutated_delegation_chain_never_verifies(blob: bytes, mutate_leaf: bool) -> None:
    """The edge's certificate arrives with the device's (enrollment while the cloud is away)."""
    leaf, inter = (blob, EDGE_CERT) if mutate_leaf else (DELEGATED, blob)
    cert = run(
        "crypto.verify_certificate(chain)",
        lambda: verify_certificate(leaf, trust=TRUST, now=NOW + 1, intermediates=[inter]),
        CertificateError,
    )
    if cert is not None:
        assert (leaf, inter) == (DELEGATED, EDGE_CERT) or (leaf == EDGE_CERT and inter == DELEGATED)


@fuzz(100)
@given(st.one_of(mutated(REVOKED), st.binary(max_size=400)))
def test_a_mutated_revocation_list_never_verifies(blob: bytes) -> None:
    rl = run(
        "crypto.verify_revocation_list",
        lambda: verify_revocation_list(blob, trust=TRUST),
        CertificateError,
    )
    if rl is not None:
        assert blob == REVOKED
        assert rl.node_ids == frozenset({"dev-99"})
        assert rl.serials == frozenset({7, 9})


_LIST_BYTES = SignedRevocationList.from_bytes(REVOKED).list_bytes


@fuzz(100)
@given(
    st.one_of(
        mutated(_LIST_BYTES),
        st.builds(
            lambda serials, ids: b"".join(
                [
                    _LIST_BYTES[:5],
                    (3).to_bytes(8, "big"),
                    NOW.to_bytes(8, "big"),
                    bytes([9]) + b"mesh-root",
                    len(serials).to_bytes(4, "big"),
                    *(s.to_bytes(8, "big") for s in serials),
                    len(ids).to_bytes(4, "big"),
                    *(bytes([len(i)]) + i for i in ids),
                ]
            ),
            st.lists(st.integers(0, 2**64 - 1), max_size=5),
            st.lists(st.binary(max_size=70), max_size=4),
        ),
    )
)
def test_revocation_list_bytes_decode_strictly(data: bytes) -> None:
    """Unsorted, duplicate, zero or oversize entries; bad ids; counts past the end."""
    rl = run(
        "crypto.RevocationList.from_bytes",
        lambda: RevocationList.from_bytes(data),
        CertificateError,
    )
    if rl is not None:
        assert rl.to_bytes() == data  # one encoding per list


KEY = bytes(range(32))
SEALED = aead.seal(KEY, b"a segment of some object", aad=b"aad", nonce=bytes(24))
WRAPPED = boxes.wrap_key(DEVICE.kx_public, bytes([7]) * 32)


@fuzz(100)
@given(st.one_of(mutated(SEALED), mutated(WRAPPED), st.binary(max_size=120)))
def test_sealed_blobs_open_only_unchanged(blob: bytes) -> None:
    plain = run(
        "crypto.aead.open_sealed",
        lambda: aead.open_sealed(KEY, blob, aad=b"aad"),
        AuthenticationError,
    )
    assert plain is None or blob == SEALED
    key = run(
        "crypto.boxes.unwrap_key",
        lambda: boxes.unwrap_key(DEVICE.kx_secret(), blob),
        AuthenticationError,
    )
    assert key is None or blob == WRAPPED


@fuzz(100)
@given(st.one_of(st.binary(min_size=SHARE_SIZE, max_size=SHARE_SIZE), st.binary(max_size=80)))
def test_shamir_shares_decode_strictly(data: bytes) -> None:
    share = run("crypto.Share.from_bytes", lambda: Share.from_bytes(data), DecodeError)
    if share is not None:
        assert share.to_bytes() == data
