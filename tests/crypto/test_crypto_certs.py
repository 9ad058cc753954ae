"""Certificates, revocation lists, trust stores, authorities and delegation."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from crypto_support import NOW, CountingBits, identity_from_byte, load_spec_vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.crypto import keystore
from securemesh.crypto.certs import (
    CERT_DOMAIN,
    MAX_AUTHORITY_STATE_SIZE,
    MAX_CERT_SIZE,
    MAX_ROLES,
    Authority,
    Certificate,
    DelegatedAuthority,
    Delegation,
    RevocationList,
    SignedCertificate,
    SignedRevocationList,
    Tier,
    TrustStore,
    verify_certificate,
    verify_revocation_list,
)
from securemesh.crypto.identity import NodeIdentity
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import (
    CertificateError,
    CertificateExpired,
    CertificateMalformed,
    CertificateNotYetValid,
    CertificateRevoked,
    CertificateSignatureInvalid,
    CorruptKeyFile,
    DelegationNotAllowed,
    LocalError,
    NameConstraintViolation,
    RemoteError,
    RevocationListRollback,
    UnknownIssuer,
    WrongPassphrase,
)

FAST = keystore.UNSAFE_FAST_PARAMS
DAY = 86_400


def issue_device(authority: Authority, device: NodeIdentity, **kw: object) -> SignedCertificate:
    args: dict[str, object] = {"lifetime_s": DAY, "now": NOW}
    args.update(kw)
    return authority.issue("dev-01", Tier.END, ["sensor"], device.public(), **args)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- encoding

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
roles = st.lists(st.from_regex(r"[A-Za-z0-9._:-]{1,32}", fullmatch=True), max_size=MAX_ROLES)
keys = st.binary(min_size=32, max_size=32)


@st.composite
def certificates(draw: st.DrawFn) -> Certificate:
    not_before = draw(st.integers(0, 2**63 - 2))
    delegation = draw(
        st.none()
        | st.builds(
            Delegation,
            st.frozensets(st.sampled_from(list(Tier)), min_size=1),
            st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", fullmatch=True),
        )
    )
    return Certificate(
        serial=draw(st.integers(1, 2**63 - 1)),
        node_id=draw(ids),
        tier=draw(st.sampled_from(list(Tier))),
        roles=tuple(sorted(set(draw(roles)))),
        verify_key=draw(keys),
        kx_key=draw(keys),
        curve_key=draw(keys),
        not_before=not_before,
        not_after=draw(st.integers(not_before + 1, 2**63 - 1)),
        issuer=draw(ids),
        delegation=delegation,
    )


@given(certificates())
def test_certificate_encoding_roundtrip(cert: Certificate) -> None:
    data = cert.to_bytes()
    assert len(data) + 64 <= MAX_CERT_SIZE
    assert Certificate.from_bytes(data) == cert
    assert Certificate.from_bytes(data).to_bytes() == data
    assert cert.signed_message() == CERT_DOMAIN + data


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    trust = TrustStore({"mesh-root": bytes(32)})
    with contextlib.suppress(CertificateError):  # anything else fails the test
        verify_certificate(data, trust=trust, now=NOW)


@settings(max_examples=300)
@given(data=st.data())
def test_mutated_certificates_fail_cleanly(data: st.DataObject) -> None:
    """Random edits of a valid certificate: verified or a CertificateError, nothing else."""
    authority = Authority.create("mesh-root", now=NOW, signer=Ed25519Signer.from_seed(bytes(32)))
    blob = bytearray(
        authority.issue(
            "dev-01", Tier.END, ["a", "b"], identity_from_byte(1).public(), lifetime_s=DAY, now=NOW
        ).to_bytes()
    )
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        index = data.draw(st.integers(0, len(blob) - 1))
        if op == "set":
            blob[index] = data.draw(st.integers(0, 255))
        elif op == "insert":
            blob.insert(index, data.draw(st.integers(0, 255)))
        else:
            del blob[index]
    with contextlib.suppress(CertificateError):
        verify_certificate(bytes(blob), trust=authority.trust_store(), now=NOW)


def test_documented_layout_by_hand(authority: Authority, device: NodeIdentity) -> None:
    """Assemble the certificate byte by byte from the module docstring's table."""
    signed = issue_device(authority, device)
    cert = signed.unverified_certificate()
    expected = b"".join(
        [
            b"SMC\x01",
            struct.pack(">Q", cert.serial),
            bytes([6]) + b"dev-01",
            bytes([1]),  # tier end
            bytes([1, 6]) + b"sensor",
            device.verify_key,
            device.kx_public,
            device.curve_public,
            struct.pack(">QQ", NOW, NOW + DAY),
            bytes([9]) + b"mesh-root",
            b"\x00",
        ]
    )
    assert signed.cert_bytes == expected
    assert (
        Ed25519Signer.from_seed(bytes(range(32))).sign(CERT_DOMAIN + expected) == signed.signature
    )


def test_known_answer_vectors() -> None:
    vectors = load_spec_vectors("certificates.json")
    root = vectors["authority"]
    signer = Ed25519Signer.from_seed(bytes.fromhex(root["ed25519_seed"]))
    assert signer.verify_key.hex() == root["verify_key"]
    trust = TrustStore({root["id"]: signer.verify_key})
    by_name = {}
    for item in vectors["certificates"]:
        blob = bytes.fromhex(item["signed"])
        signed = SignedCertificate.from_bytes(blob)
        assert signed.to_bytes() == blob
        by_name[item["name"]] = signed
        ident = identity_from_byte(item["identity_byte"])
        cert = signed.unverified_certificate()
        assert cert.public_keys() == ident.public()
        assert cert.issuer == item["issued_by"]
        if item["issued_by"] == root["id"]:
            assert signer.sign(CERT_DOMAIN + signed.cert_bytes) == signed.signature
    assert by_name["device"].unverified_certificate().roles == ("camera", "sensor")
    assert by_name["edge-delegation"].unverified_certificate().delegation == Delegation(
        frozenset({Tier.END})
    )
    dev = verify_certificate(
        by_name["device-by-edge"],
        trust=trust,
        now=NOW + 200,
        intermediates=[by_name["edge-delegation"]],
    )
    assert dev.node_id == "dev-02"  # a flag-1 (unconstrained) delegation, as before
    constrained = by_name["edge-delegation-constrained"]
    assert constrained.unverified_certificate().delegation == Delegation(
        frozenset({Tier.END}), "edge-1."
    )
    assert constrained.cert_bytes.endswith(b"\x02\x01\x01\x07edge-1.")
    dev3 = verify_certificate(
        by_name["device-by-constrained-edge"],
        trust=trust,
        now=NOW + 200,
        intermediates=[constrained],
    )
    assert dev3.node_id == "edge-1.dev-03"
    with pytest.raises(NameConstraintViolation):  # the old device under the new constraint
        verify_certificate(
            by_name["device-by-edge"], trust=trust, now=NOW + 200, intermediates=[constrained]
        )
    rl_vec = vectors["revocation_list"]
    rl = verify_revocation_list(bytes.fromhex(rl_vec["signed"]), trust=trust)
    assert (rl.version, rl.issued_at) == (rl_vec["version"], rl_vec["issued_at"])
    assert rl.serials == frozenset(rl_vec["serials"])
    assert rl.node_ids == frozenset(rl_vec["node_ids"])
    assert (
        SignedRevocationList.from_bytes(bytes.fromhex(rl_vec["signed"])).to_bytes().hex()
        == rl_vec["signed"]
    )


def test_non_canonical_encodings_are_malformed(authority: Authority, device: NodeIdentity) -> None:
    cert = issue_device(authority, device).unverified_certificate()
    good = cert.to_bytes()
    two_roles = dataclasses.replace(cert, roles=("a", "b")).to_bytes()
    swapped = two_roles.replace(b"\x01a\x01b", b"\x01b\x01a")
    duplicate = two_roles.replace(b"\x01a\x01b", b"\x01a\x01a")
    for bad in (
        good + b"\x00",
        good[:-1],
        b"SMX" + good[3:],
        good[:3] + b"\x02" + good[4:],
        good[:-1] + b"\x02",  # unknown delegation flag
        good[:-1] + b"\x01\x02\x02\x01",  # delegation tiers not increasing
        good[:-1] + b"\x01\x00",  # empty delegation
        good[:-1] + b"\x02\x01\x01",  # name-constrained delegation without its prefix
        good[:-1] + b"\x02\x01\x01\x00",  # empty name prefix
        good[:-1] + b"\x02\x01\x01\x02.a",  # prefix not in node-id syntax
        good[:-1] + b"\x02\x01\x01\x40" + b"a" * 64,  # prefix leaves no room for an id
        swapped,
        duplicate,
    ):
        with pytest.raises(CertificateMalformed):
            Certificate.from_bytes(bad)


def _fields(cert: Certificate) -> dict[str, object]:
    return {name: getattr(cert, name) for name in Certificate.__dataclass_fields__}


def test_constructor_validation_is_local(authority: Authority, device: NodeIdentity) -> None:
    base = _fields(issue_device(authority, device).unverified_certificate())
    for change in (
        {"node_id": "bad id"},
        {"node_id": ".hidden"},
        {"node_id": "x" * 65},
        {"issuer": ""},
        {"serial": 0},
        {"serial": 2**63},
        {"serial": True},
        {"roles": ("b", "a")},
        {"roles": ("a", "a")},
        {"roles": ["a"]},
        {"roles": ("bad role",)},
        {"roles": tuple(f"r{i:02d}" for i in range(MAX_ROLES + 1))},
        {"verify_key": bytes(31)},
        {"not_after": NOW},
        {"tier": "end"},
        {"version": 2},
    ):
        with pytest.raises(LocalError):
            Certificate(**{**base, **change})  # type: ignore[arg-type]


# ------------------------------------------------------------ verification order


def test_valid_certificate_verifies(authority: Authority, device: NodeIdentity) -> None:
    signed = issue_device(authority, device)
    trust = authority.trust_store()
    cert = verify_certificate(signed.to_bytes(), trust=trust, now=NOW)
    assert cert == signed.unverified_certificate()
    assert cert.public_keys() == device.public()
    assert verify_certificate(signed, trust=trust, now=NOW + DAY - 0.001) == cert


def test_rejections_have_distinct_types(authority: Authority, device: NodeIdentity) -> None:
    """Flipped bit, expired, not yet valid, revoked and unknown issuer: five distinct types."""
    signed = issue_device(authority, device)
    trust = authority.trust_store()
    blob = bytearray(signed.to_bytes())
    blob[-10] ^= 0x01  # inside the signature
    stranger = Authority.create("mesh-root", now=NOW)  # same name, different key
    other = Authority.create("other-root", now=NOW)
    trust_revoked = authority.trust_store()
    trust_revoked.update_revocation_list(
        authority.revoke(signed.unverified_certificate().serial, now=NOW)
    )
    cases: dict[type[CertificateError], Callable[[], Certificate]] = {
        CertificateSignatureInvalid: lambda: verify_certificate(bytes(blob), trust=trust, now=NOW),
        CertificateExpired: lambda: verify_certificate(signed, trust=trust, now=NOW + DAY),
        CertificateNotYetValid: lambda: verify_certificate(signed, trust=trust, now=NOW - 1),
        CertificateRevoked: lambda: verify_certificate(signed, trust=trust_revoked, now=NOW),
        UnknownIssuer: lambda: verify_certificate(
            issue_device(other, device), trust=trust, now=NOW
        ),
    }
    for expected, call in cases.items():
        with pytest.raises(CertificateError) as info:
            call()
        assert type(info.value) is expected, (expected, info.value)
        assert isinstance(info.value, RemoteError)
    assert len({cls.reason for cls in cases}) == len(cases)
    with pytest.raises(CertificateSignatureInvalid):  # right name, wrong key
        verify_certificate(issue_device(stranger, device), trust=trust, now=NOW)


def test_every_single_bit_flip_is_rejected(authority: Authority, device: NodeIdentity) -> None:
    """Exhaustive over every bit of the encoded signed certificate."""
    blob = issue_device(authority, device).to_bytes()
    trust = authority.trust_store()
    cert_len = len(blob) - 64
    key_region = range(blob.index(device.verify_key), blob.index(device.verify_key) + 96)
    for position in range(len(blob) * 8):
        tampered = bytearray(blob)
        tampered[position // 8] ^= 1 << (position % 8)
        with pytest.raises(CertificateError) as info:
            verify_certificate(bytes(tampered), trust=trust, now=NOW + 1)
        assert type(info.value) in (
            CertificateMalformed,
            UnknownIssuer,
            CertificateSignatureInvalid,
        )
        if position // 8 >= cert_len or position // 8 in key_region:
            assert type(info.value) is CertificateSignatureInvalid


def test_validity_boundaries(authority: Authority, device: NodeIdentity) -> None:
    signed = issue_device(authority, device, backdate_s=60)
    cert = signed.unverified_certificate()
    trust = authority.trust_store()
    assert cert.not_before == NOW - 60
    verify_certificate(signed, trust=trust, now=NOW - 60)
    with pytest.raises(CertificateNotYetValid):
        verify_certificate(signed, trust=trust, now=NOW - 60.5)
    with pytest.raises(CertificateExpired):
        verify_certificate(signed, trust=trust, now=cert.not_after)
    assert issubclass(CertificateNotYetValid, CertificateExpired)


@pytest.mark.parametrize("now", [float("nan"), float("inf"), "1700000000", None])
def test_a_broken_clock_is_refused(authority: Authority, device: NodeIdentity, now: object) -> None:
    signed = issue_device(authority, device)
    with pytest.raises(LocalError):
        verify_certificate(signed, trust=authority.trust_store(), now=now)  # type: ignore[arg-type]


def test_size_limit_first(authority: Authority) -> None:
    trust = authority.trust_store()
    with pytest.raises(CertificateMalformed, match="larger than"):
        verify_certificate(bytes(MAX_CERT_SIZE + 1), trust=trust, now=NOW)
    for short in (b"", b"x" * 64):
        with pytest.raises(CertificateMalformed):
            verify_certificate(short, trust=trust, now=NOW)


# ---------------------------------------------------------------------- revocation


def test_revocation_by_node_id_and_serial(authority: Authority, device: NodeIdentity) -> None:
    first = issue_device(authority, device)
    second = authority.renew(first, now=NOW + 10, lifetime_s=DAY)
    trust = authority.trust_store()
    trust.update_revocation_list(authority.revoke(first.unverified_certificate().serial, now=NOW))
    with pytest.raises(CertificateRevoked):
        verify_certificate(first, trust=trust, now=NOW + 20)
    verify_certificate(second, trust=trust, now=NOW + 20)  # the renewal has another serial
    rl = trust.update_revocation_list(authority.revoke("dev-01", now=NOW + 30).to_bytes())
    assert rl.version == 3
    with pytest.raises(CertificateRevoked):
        verify_certificate(second, trust=trust, now=NOW + 40)
    with pytest.raises(LocalError, match="revoked"):
        issue_device(authority, device)


def test_revocation_list_rollback_is_refused(authority: Authority) -> None:
    trust = authority.trust_store()
    v1 = authority.revocation_list
    v2 = authority.revoke("a", now=NOW)
    v3 = authority.revoke(serials=[7], node_ids=["b"], now=NOW)
    assert trust.update_revocation_list(v3).version == 3
    for old in (v1, v2):
        with pytest.raises(RevocationListRollback):
            trust.update_revocation_list(old.to_bytes())
    assert trust.update_revocation_list(v3).version == 3  # the same list again is a no-op
    forked = Authority(
        "mesh-root",
        Ed25519Signer.from_seed(bytes(range(32))),
        created_at=NOW,
        revocation_list=v2,
    ).revoke("c", now=NOW)  # a different version-3 list
    with pytest.raises(RevocationListRollback):
        trust.update_revocation_list(forked)
    rl = trust.revocation_list("mesh-root")
    assert rl is not None
    assert rl.node_ids == frozenset({"a", "b"})
    assert rl.serials == frozenset({7})


def test_revocation_list_verification(authority: Authority) -> None:
    trust = authority.trust_store()
    signed = authority.revoke("dev-9", now=NOW)
    blob = signed.to_bytes()
    assert verify_revocation_list(blob, trust=trust).node_ids == frozenset({"dev-9"})
    bad = bytearray(blob)
    bad[-1] ^= 1
    with pytest.raises(CertificateSignatureInvalid):
        verify_revocation_list(bytes(bad), trust=trust)
    with pytest.raises(UnknownIssuer):
        verify_revocation_list(Authority.create("elsewhere", now=NOW).revocation_list, trust=trust)
    for garbage in (b"", b"SMR", blob[:-65] + blob[-64:], bytes(100)):
        with pytest.raises(CertificateMalformed):
            verify_revocation_list(garbage, trust=trust)
    for position in range(len(blob) * 8):
        tampered = bytearray(blob)
        tampered[position // 8] ^= 1 << (position % 8)
        with pytest.raises((CertificateMalformed, UnknownIssuer, CertificateSignatureInvalid)):
            verify_revocation_list(bytes(tampered), trust=trust)


@given(
    version=st.integers(1, 2**63 - 1),
    serials=st.frozensets(st.integers(1, 2**63 - 1), max_size=20),
    node_ids=st.frozensets(ids, max_size=20),
)
def test_revocation_list_roundtrip(
    version: int, serials: frozenset[int], node_ids: frozenset[str]
) -> None:
    rl = RevocationList(
        version=version, issued_at=NOW, issuer="root", serials=serials, node_ids=node_ids
    )
    assert RevocationList.from_bytes(rl.to_bytes()) == rl


# ----------------------------------------------------------------------- renewal


def test_renew_keeps_keys_changes_serial(authority: Authority, device: NodeIdentity) -> None:
    old = issue_device(authority, device)
    new = authority.renew(old.to_bytes(), now=NOW + DAY + 5, lifetime_s=2 * DAY)
    o, n = old.unverified_certificate(), new.unverified_certificate()
    assert n.serial != o.serial
    assert (n.node_id, n.tier, n.roles, n.public_keys()) == (
        o.node_id,
        o.tier,
        o.roles,
        o.public_keys(),
    )
    assert (n.not_before, n.not_after) == (NOW + DAY + 5, NOW + 3 * DAY + 5)
    verify_certificate(new, trust=authority.trust_store(), now=NOW + 2 * DAY)
    other = Authority.create("other-root", now=NOW)
    with pytest.raises(UnknownIssuer):
        other.renew(old, now=NOW, lifetime_s=DAY)
    forged = SignedCertificate(old.cert_bytes, bytes(64))
    with pytest.raises(CertificateSignatureInvalid):
        authority.renew(forged, now=NOW, lifetime_s=DAY)
    authority.revoke(o.serial, now=NOW)
    with pytest.raises(CertificateRevoked):
        authority.renew(old, now=NOW, lifetime_s=DAY)


def test_serials_are_random_63_bit_by_default(device: NodeIdentity) -> None:
    authority = Authority.create("root", now=NOW)
    serials = {
        authority.issue(f"n{i}", "end", [], device.public(), lifetime_s=1, now=NOW)
        .unverified_certificate()
        .serial
        for i in range(20)
    }
    assert len(serials) == 20
    assert all(1 <= s < 2**63 for s in serials)
    assert max(serials) > 2**50


# -------------------------------------------------------------------- delegation


@pytest.fixture
def delegated(authority: Authority, edge: NodeIdentity) -> DelegatedAuthority:
    edge_cert = authority.issue(
        "edge-1", Tier.EDGE, ["storage"], edge.public(), lifetime_s=7 * DAY, now=NOW
    )
    grant = authority.delegate(edge_cert, lifetime_s=2 * DAY, now=NOW)
    return DelegatedAuthority(grant, edge, randbits=CountingBits(500))


def test_delegated_authority_issues_end_certs(
    authority: Authority, delegated: DelegatedAuthority
) -> None:
    device = identity_from_byte(0x70)
    cert = delegated.issue(
        "edge-1.dev-7", Tier.END, ["cam"], device.public(), lifetime_s=10 * DAY, now=NOW + 100
    )
    trust = authority.trust_store()
    with pytest.raises(UnknownIssuer):
        verify_certificate(cert, trust=trust, now=NOW + 200)
    got = verify_certificate(
        cert, trust=trust, now=NOW + 200, intermediates=[delegated.certificate.to_bytes()]
    )
    assert got.issuer == "edge-1"
    assert got.not_after == NOW + 2 * DAY  # clamped to the delegation's lifetime
    trust.add_delegated_authority(delegated.certificate, now=NOW)
    assert verify_certificate(cert, trust=trust, now=NOW + 200) == got
    assert set(trust.delegated_authorities) == {"edge-1"}


def test_delegated_authority_refuses_other_tiers(delegated: DelegatedAuthority) -> None:
    keys = identity_from_byte(0x70).public()
    for tier in (Tier.EDGE, Tier.CLOUD, "edge"):
        with pytest.raises(LocalError, match="may only issue"):
            delegated.issue("node-x", tier, [], keys, lifetime_s=DAY, now=NOW)
    with pytest.raises(LocalError):
        delegated.issue("edge-1.dev-x", Tier.END, [], keys, lifetime_s=DAY, now=NOW + 3 * DAY)


def _forge(signer: NodeIdentity, **fields: object) -> SignedCertificate:
    base: dict[str, object] = {
        "serial": 42,
        "node_id": "rogue",
        "tier": Tier.EDGE,
        "verify_key": signer.verify_key,
        "kx_key": signer.kx_public,
        "curve_key": signer.curve_public,
        "not_before": NOW,
        "not_after": NOW + DAY,
        "issuer": "edge-1",
    }
    base.update(fields)
    body = Certificate(**base).to_bytes()  # type: ignore[arg-type]
    return SignedCertificate(body, signer.sign(CERT_DOMAIN + body))


def test_delegation_constraint_is_enforced_by_verifiers(
    authority: Authority, delegated: DelegatedAuthority, edge: NodeIdentity
) -> None:
    """A rogue edge signing outside its delegation is caught by every verifier."""
    trust = authority.trust_store()
    trust.add_delegated_authority(delegated.certificate, now=NOW)
    with pytest.raises(DelegationNotAllowed):
        verify_certificate(_forge(edge, tier=Tier.EDGE), trust=trust, now=NOW + 1)
    with pytest.raises(DelegationNotAllowed):
        verify_certificate(
            _forge(edge, tier=Tier.END, delegation=Delegation(frozenset({Tier.END}))),
            trust=trust,
            now=NOW + 1,
        )
    verify_certificate(
        _forge(edge, node_id="edge-1.rogue", tier=Tier.END), trust=trust, now=NOW + 1
    )


def test_delegate_chain_failures(
    authority: Authority, delegated: DelegatedAuthority, edge: NodeIdentity
) -> None:
    trust = authority.trust_store()
    child = delegated.issue(
        "edge-1.dev-7", Tier.END, [], identity_from_byte(0x70).public(), lifetime_s=DAY, now=NOW
    )
    chain = [delegated.certificate]
    # The delegation itself expired: the child is rejected as expired.
    with pytest.raises(CertificateExpired):
        verify_certificate(child, trust=trust, now=NOW + 2 * DAY + 1, intermediates=chain)
    # Revoking the edge cuts off everything it issued.
    trust.update_revocation_list(authority.revoke("edge-1", now=NOW))
    with pytest.raises(CertificateRevoked, match="issuing authority"):
        verify_certificate(child, trust=trust, now=NOW + 10, intermediates=chain)
    # A plain node certificate is not an authority.
    trust2 = authority.trust_store()
    plain = Authority.create("mesh-root", now=NOW, signer=Ed25519Signer.from_seed(bytes(range(32))))
    plain_edge = plain.issue("edge-2", Tier.EDGE, [], edge.public(), lifetime_s=DAY, now=NOW)
    forged_child = _forge(edge, tier=Tier.END, issuer="edge-2")
    with pytest.raises(DelegationNotAllowed):
        verify_certificate(forged_child, trust=trust2, now=NOW + 1, intermediates=[plain_edge])
    with pytest.raises(DelegationNotAllowed):
        trust2.add_delegated_authority(plain_edge, now=NOW)
    # A delegate cannot be vouched for by another delegate (chains are one deep).
    sub = _forge(
        edge, node_id="edge-3", tier=Tier.EDGE, delegation=Delegation(frozenset({Tier.END}))
    )
    grandchild = _forge(edge, node_id="dev-8", tier=Tier.END, issuer="edge-3")
    with pytest.raises(UnknownIssuer):
        verify_certificate(
            grandchild, trust=trust2, now=NOW + 1, intermediates=[sub, delegated.certificate]
        )


def test_a_renewed_delegation_takes_over_from_the_expired_one(
    authority: Authority, delegated: DelegatedAuthority, edge: NodeIdentity
) -> None:
    """An edge renews its delegation before it ends; verifiers holding the old one accept
    the new one sent along once the old one expired -- and only then, and never a
    revoked or a foreign one."""
    trust = authority.trust_store()
    old = delegated.certificate
    trust.add_delegated_authority(old, now=NOW)
    renewed = authority.renew(old, now=NOW + DAY, lifetime_s=2 * DAY)  # ends at NOW + 3 days
    assert renewed.unverified_certificate().delegation is not None
    later = DelegatedAuthority(renewed, edge)
    device = identity_from_byte(0x71).public()
    child = later.issue("edge-1.dev-9", Tier.END, [], device, lifetime_s=DAY, now=NOW + 2 * DAY)
    after_old = NOW + 2 * DAY + 10  # the held delegation has ended, the child is valid
    with pytest.raises(CertificateExpired, match="issuing authority"):
        verify_certificate(child, trust=trust, now=after_old)
    got = verify_certificate(child, trust=trust, now=after_old, intermediates=[renewed])
    assert got.node_id == "edge-1.dev-9"
    # the trust store keeps the newer one; an older one offered later does not replace it
    trust.add_delegated_authority(renewed, now=NOW + DAY)
    assert trust.delegated_authorities["edge-1"] == renewed
    trust.add_delegated_authority(old, now=NOW + DAY)
    assert trust.delegated_authorities["edge-1"] == renewed
    assert verify_certificate(child, trust=trust, now=after_old).node_id == "edge-1.dev-9"
    # a held delegation that is revoked (by serial) is not bypassed by another one
    trust2 = authority.trust_store()
    trust2.add_delegated_authority(old, now=NOW)
    serial = old.unverified_certificate().serial
    trust2.update_revocation_list(authority.revoke(serial, now=NOW + 1))
    child_old = delegated.issue("edge-1.dev-8", Tier.END, [], device, lifetime_s=DAY, now=NOW)
    with pytest.raises(CertificateRevoked, match="issuing authority"):
        verify_certificate(child_old, trust=trust2, now=NOW + 10, intermediates=[renewed])
    # a foreign "renewal" (not signed by the root) is no way around an expired one
    stranger = _forge(
        edge, node_id="edge-1", tier=Tier.EDGE, issuer="mesh-root", not_after=NOW + 5 * DAY,
        delegation=Delegation(frozenset({Tier.END})),
    )  # fmt: skip
    with pytest.raises(CertificateError):
        verify_certificate(child, trust=authority_trust_with(authority, old),
                           now=after_old, intermediates=[stranger])  # fmt: skip


def authority_trust_with(authority: Authority, delegation: SignedCertificate) -> TrustStore:
    trust = authority.trust_store()
    trust.add_delegated_authority(delegation, now=NOW)
    return trust


def test_delegation_misuse(authority: Authority, device: NodeIdentity, edge: NodeIdentity) -> None:
    end_cert = issue_device(authority, device)
    with pytest.raises(LocalError):
        authority.delegate(end_cert, lifetime_s=DAY, now=NOW)
    with pytest.raises(LocalError):
        DelegatedAuthority(end_cert, device)
    edge_cert = authority.issue("edge-1", "edge", [], edge.public(), lifetime_s=DAY, now=NOW)
    grant = authority.delegate(edge_cert, tiers=["end", "edge"], lifetime_s=DAY, now=NOW)
    with pytest.raises(LocalError):
        DelegatedAuthority(grant, device)  # wrong key
    assert grant.unverified_certificate().delegation == Delegation(
        frozenset({Tier.END, Tier.EDGE}), "edge-1."
    )
    with pytest.raises(LocalError):
        authority.delegate(edge_cert, tiers=["nope"], lifetime_s=DAY, now=NOW)


def test_name_constraint_is_enforced_by_verifiers(
    authority: Authority, delegated: DelegatedAuthority, edge: NodeIdentity
) -> None:
    """A compromised edge cannot mint a certificate for a node id outside its namespace
    (e.g. a device enrolled at the cloud or at another edge), by any route."""
    assert delegated.name_prefix == "edge-1."
    trust = authority.trust_store()
    for node_id in ("dev-01", "edge-1", "edge-1.", "edge-10.dev", "edge-2.dev", "xedge-1.dev"):
        with pytest.raises(LocalError, match="outside this delegated authority's namespace"):
            delegated.issue(node_id, Tier.END, [], edge.public(), lifetime_s=DAY, now=NOW)
        forged = _forge(edge, node_id=node_id, tier=Tier.END)  # signed by the edge's key anyway
        with pytest.raises(NameConstraintViolation, match="edge-1\\."):
            verify_certificate(
                forged, trust=trust, now=NOW + 1, intermediates=[delegated.certificate]
            )
    trust.add_delegated_authority(delegated.certificate, now=NOW)
    with pytest.raises(NameConstraintViolation):
        verify_certificate(_forge(edge, node_id="dev-01", tier=Tier.END), trust=trust, now=NOW + 1)
    with pytest.raises(DelegationNotAllowed):  # still the parent class for old handlers
        verify_certificate(_forge(edge, node_id="dev-01", tier=Tier.END), trust=trust, now=NOW + 1)
    ok = delegated.issue("edge-1.dev-01", Tier.END, [], edge.public(), lifetime_s=DAY, now=NOW)
    assert verify_certificate(ok, trust=trust, now=NOW + 1).node_id == "edge-1.dev-01"


def test_delegation_name_prefix_options(authority: Authority, edge: NodeIdentity) -> None:
    edge_cert = authority.issue("edge-1", Tier.EDGE, [], edge.public(), lifetime_s=DAY, now=NOW)
    default = authority.delegate(edge_cert, lifetime_s=DAY, now=NOW)
    delegation = default.unverified_certificate().delegation
    assert delegation == Delegation(frozenset({Tier.END}), "edge-1.")
    # flag 2, the tier codes, then the prefix ends the certificate body
    assert default.cert_bytes.endswith(b"\x02\x01\x01\x07edge-1.")
    custom = authority.delegate(edge_cert, lifetime_s=DAY, now=NOW, name_prefix="site-a")
    assert custom.unverified_certificate().delegation == Delegation(frozenset({Tier.END}), "site-a")
    free = authority.delegate(edge_cert, lifetime_s=DAY, now=NOW, unconstrained=True)
    assert free.unverified_certificate().delegation == Delegation(frozenset({Tier.END}))
    assert free.cert_bytes.endswith(b"\x01\x01\x01")  # the version-1 layout, unchanged
    assert DelegatedAuthority(free, edge).name_prefix is None
    with pytest.raises(LocalError, match="exclude"):
        authority.delegate(edge_cert, lifetime_s=DAY, now=NOW, name_prefix="a.", unconstrained=True)
    for bad in ("", ".a", "a" * 64, "a b"):
        with pytest.raises(LocalError, match="name prefix"):
            authority.delegate(edge_cert, lifetime_s=DAY, now=NOW, name_prefix=bad)
    long_id = authority.issue("e" * 64, Tier.EDGE, [], edge.public(), lifetime_s=DAY, now=NOW)
    with pytest.raises(LocalError, match="name prefix"):  # "e"*64 + "." cannot be a prefix
        authority.delegate(long_id, lifetime_s=DAY, now=NOW)
    # renewal by the root keeps the constraint
    renewed = authority.renew(default, now=NOW + 10, lifetime_s=DAY)
    assert renewed.unverified_certificate().delegation == delegation
    assert delegation.permits_name("edge-1.x")
    assert not delegation.permits_name("edge-1.")


def test_trust_store_rules() -> None:
    trust = TrustStore()
    trust.add_root("a", bytes(32))
    trust.add_root("a", bytes(32))
    with pytest.raises(LocalError):
        trust.add_root("a", b"\x01" * 32)
    with pytest.raises(LocalError):
        trust.add_root("bad id", bytes(32))
    assert trust.roots == {"a": bytes(32)}
    assert trust.revocation_list("a") is None


# ------------------------------------------------------------------- persistence


def test_authority_stored_round_trip(authority: Authority, device: NodeIdentity) -> None:
    """sealed_key/state_bytes/from_stored: the authority's persistence without any I/O."""
    signed = issue_device(authority, device)
    authority.revoke("gone", now=NOW)
    sealed, state = authority.sealed_key("pw", params=FAST), authority.state_bytes()
    assert sealed.startswith(keystore.MAGIC)
    assert authority._signer.seed() not in sealed
    loaded = Authority.from_stored(sealed, state, "pw")
    assert loaded.verify_key == authority.verify_key
    assert loaded.revocation_list == authority.revocation_list
    assert loaded.revoke("next", now=NOW).unverified_list().version == 3
    again = Authority.from_stored(sealed, loaded.state_bytes(), "pw")
    assert again.revocation_list.unverified_list().node_ids == frozenset({"gone", "next"})
    verify_certificate(signed, trust=again.trust_store(), now=NOW)
    with pytest.raises(WrongPassphrase):
        Authority.from_stored(sealed, state, "wrong")
    assert bytes(range(32)).hex().encode() not in state


def test_authority_state_tampering(authority: Authority) -> None:
    sealed, state_bytes = authority.sealed_key("pw", params=FAST), authority.state_bytes()
    other = Authority.create("mesh-root", now=NOW)
    # Key of one authority with the state of another.
    with pytest.raises(CorruptKeyFile):
        Authority.from_stored(other.sealed_key("pw", params=FAST), state_bytes, "pw")
    state = json.loads(state_bytes)
    for change in (
        {"extra": 1},
        {"format": "x"},
        {"revocation_list_version": 9},
        {"verify_key": "!!"},
        {"created_at": "now"},
    ):
        with pytest.raises(CorruptKeyFile):
            Authority.from_stored(sealed, json.dumps({**state, **change}).encode(), "pw")
    for bad in (b"not json", b"{" * MAX_AUTHORITY_STATE_SIZE):
        with pytest.raises(CorruptKeyFile):
            Authority.from_stored(sealed, bad, "pw")
    with pytest.raises(CorruptKeyFile):
        Authority.from_stored(keystore.seal_secret(b"x" * 40, "pw", params=FAST), state_bytes, "pw")


def test_reprs_hide_secrets(
    authority: Authority, delegated: DelegatedAuthority, device: NodeIdentity
) -> None:
    signed = issue_device(authority, device)
    text = repr(authority) + repr(delegated) + repr(signed) + repr(authority.revocation_list)
    assert bytes(range(32)).hex()[:16] not in text
    assert "dev-01" in repr(signed)


def test_crypto_does_no_file_io_beyond_the_key_file_helpers() -> None:
    """Authority persistence lives in securemesh.enroll; crypto only makes and checks bytes.

    Only ``keystore`` (key files) and ``identity`` (its save/load over keystore) may
    touch the file system.
    """
    import ast

    import securemesh.crypto

    allowed = {"keystore.py", "identity.py"}
    root = Path(securemesh.crypto.__file__).parent
    for path in sorted(root.glob("*.py")):
        if path.name in allowed:
            continue
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        imported = {
            alias.name
            for n in ast.walk(tree)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for alias in n.names
        } | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "open" not in names, path.name
        assert not {"pathlib", "Path", "shutil", "tempfile"} & imported, path.name
        file_calls = {"write_file_atomic", "write_secret_file", "read_secret_file", "read_bytes"}
        assert not file_calls & attrs, path.name
