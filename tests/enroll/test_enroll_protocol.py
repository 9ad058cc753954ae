"""Enrollment and renewal: the pure server logic and the client's checks, in memory."""

from __future__ import annotations

import contextlib
import dataclasses
import re

import pytest
from enroll_fixtures import NOW, Mesh
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from securemesh.crypto import (
    DelegatedAuthority,
    NodeIdentity,
    SignedCertificate,
    Tier,
    TrustStore,
    verify_certificate,
)
from securemesh.enroll import (
    EnrollmentServer,
    EnrollReply,
    EnrollRequest,
    RenewReply,
    RenewRequest,
    accept_enroll_reply,
    accept_renew_reply,
    build_enroll_request,
    build_renew_request,
)
from securemesh.enroll._store import TokenStore
from securemesh.errors import (
    AuthenticationError,
    AuthorizationError,
    CertificateExpired,
    CertificateMalformed,
    CertificateRevoked,
    LocalError,
    RevocationListRollback,
    TokenError,
    UnknownIssuer,
)


def _wire(model: EnrollRequest | EnrollReply | RenewRequest | RenewReply) -> object:
    """Through JSON and back, as over the bus."""
    return type(model).model_validate_json(model.model_dump_json(), strict=True)


def _enroll(mesh: Mesh, tier: str = "end", node_id: str = "dev-1", **kw: object):  # type: ignore[no-untyped-def]
    token = mesh.token(tier, **kw)  # type: ignore[arg-type]
    identity = NodeIdentity.generate()
    request = _wire(build_enroll_request(token, identity, node_id))
    assert isinstance(request, EnrollRequest)
    reply = mesh.server.handle_enroll(
        request, self_signature_verified_with=identity.verify_key, sender=node_id
    )
    wired = _wire(reply)
    assert isinstance(wired, EnrollReply)
    return token, identity, accept_enroll_reply(token, identity, wired, NOW + 1, node_id=node_id)


def test_happy_path_tier_and_roles_from_token(mesh: Mesh) -> None:
    token, identity, result = _enroll(mesh, "end", roles=("camera", "sensor"))
    cert = result.cert
    assert (cert.node_id, cert.tier, cert.roles, cert.issuer) == (
        "dev-1",
        Tier.END,
        ("camera", "sensor"),
        "mesh",
    )
    assert cert.public_keys() == identity.public()
    assert cert.not_after == NOW + 3600
    assert result.trust.root_key("mesh") == mesh.authority.verify_key
    assert result.authority_certificate is None
    record = mesh.store.get(token.token_id)
    assert record is not None
    assert record.used_by == "dev-1"
    assert [a.outcome for a in mesh.audits] == ["success"]
    event = mesh.audits[0].to_event(origin="cloud-1", now=NOW)
    assert event.kind == "node.enrolled"
    assert event.subject.id == "dev-1"
    assert event.details["serial"] == cert.serial


def test_token_is_one_time(mesh: Mesh) -> None:
    token = mesh.token()
    identity = NodeIdentity.generate()
    request = build_enroll_request(token, identity, "dev-1")
    mesh.server.handle_enroll(request)
    with pytest.raises(TokenError, match="already used"):
        mesh.server.handle_enroll(request)
    other = NodeIdentity.generate()
    with pytest.raises(TokenError, match="already used"):
        mesh.server.handle_enroll(build_enroll_request(token, other, "dev-2"))
    assert [a.outcome for a in mesh.audits] == ["success", "failure", "failure"]
    assert mesh.audits[-1].reason == "bad_token"
    assert (mesh.audits[-1].tier, mesh.audits[-1].roles) == ("end", ("sensor",))
    event = mesh.audits[-1].to_event(origin="cloud-1", now=NOW)
    assert (event.outcome, event.details["reason"]) == ("failure", "bad_token")


def test_expired_token(mesh: Mesh) -> None:
    token = mesh.token(ttl_s=60)
    request = build_enroll_request(token, NodeIdentity.generate(), "dev-1")
    with pytest.raises(TokenError, match="expired"):
        mesh.server.handle_enroll(request, now=NOW + 60)
    mesh.server.handle_enroll(request, now=NOW + 59)


def test_wrong_proof_and_forged_fields(mesh: Mesh) -> None:
    token = mesh.token()
    identity = NodeIdentity.generate()
    request = build_enroll_request(token, identity, "dev-1")
    wrong_secret = dataclasses.replace(token, secret=bytes(32))
    forged = build_enroll_request(wrong_secret, identity, "dev-1")
    with pytest.raises(AuthenticationError, match="proof"):
        mesh.server.handle_enroll(forged)
    # Changing any covered field breaks the proof (tier/roles are not even in the request).
    other = NodeIdentity.generate()
    for change in (
        {"node_id": "dev-2"},
        {"verify_key": other.verify_key},
        {"kx_key": other.kx_public},
        {"curve_key": other.curve_public},
    ):
        with pytest.raises(AuthenticationError):
            mesh.server.handle_enroll(request.model_copy(update=change))
    # Proof right but the self-signature is not by the named key.
    with pytest.raises(AuthenticationError):
        mesh.server.handle_enroll(request.model_copy(update={"signature": bytes(64)}))
    # The envelope must be signed by the same key and name the same node.
    with pytest.raises(AuthenticationError):
        mesh.server.handle_enroll(request, self_signature_verified_with=other.verify_key)
    with pytest.raises(AuthenticationError):
        mesh.server.handle_enroll(request, sender="dev-2")
    with pytest.raises(AuthenticationError):
        mesh.server.handle_enroll(request, peer_curve_key=other.curve_public)
    with pytest.raises(TokenError, match="unknown"):
        mesh.server.handle_enroll(request.model_copy(update={"token_id": bytes(16)}))
    # None of that consumed the token.
    mesh.server.handle_enroll(request, peer_curve_key=token.first_contact_curve_keypair().public)


def test_revoked_node_id_and_taken_node_id(mesh: Mesh) -> None:
    _, _, _first = _enroll(mesh, node_id="dev-1")
    # Someone else may not take dev-1 with other keys.
    token = mesh.token()
    with pytest.raises(TokenError, match="other keys"):
        mesh.server.handle_enroll(build_enroll_request(token, NodeIdentity.generate(), "dev-1"))
    mesh.authority.revoke("dev-2", now=NOW)
    with pytest.raises(CertificateRevoked):
        mesh.server.handle_enroll(build_enroll_request(token, NodeIdentity.generate(), "dev-2"))
    assert mesh.audits[-1].outcome == "denied"
    assert mesh.store.usable(token.token_id, now=NOW)


def test_reenrollment_keeps_keys(mesh: Mesh) -> None:
    _token, identity, first = _enroll(mesh, node_id="dev-1")
    again = mesh.token(now=NOW + 7000)
    reply = mesh.server.handle_enroll(
        build_enroll_request(again, identity, "dev-1"), now=NOW + 7200
    )
    result = accept_enroll_reply(
        again, identity, reply, NOW + 7201, node_id="dev-1", trust=first.trust
    )
    assert result.cert.public_keys() == first.cert.public_keys()
    assert result.cert.serial != first.cert.serial


def test_client_refuses_bad_replies(mesh: Mesh) -> None:
    token = mesh.token()
    identity = NodeIdentity.generate()
    reply = mesh.server.handle_enroll(build_enroll_request(token, identity, "dev-1"))
    # Another identity's keys.
    with pytest.raises(AuthenticationError, match="keys"):
        accept_enroll_reply(token, NodeIdentity.generate(), reply, NOW + 1)
    with pytest.raises(AuthenticationError, match="node id"):
        accept_enroll_reply(token, identity, reply, NOW + 1, node_id="dev-2")
    # A reply naming another root than the token.
    with pytest.raises(AuthenticationError, match="root"):
        accept_enroll_reply(token, identity, reply.model_copy(update={"root_key": bytes(32)}), NOW)
    # A token that promised other roles.
    promised = dataclasses.replace(token, roles=("admin",))
    with pytest.raises(AuthenticationError, match="roles"):
        accept_enroll_reply(promised, identity, reply, NOW + 1)
    # A certificate from a different root under the same name.
    from securemesh.crypto import Authority

    rogue = Authority.create("mesh", now=NOW)
    fake_cert = rogue.issue(
        "dev-1", Tier.END, ("sensor",), identity.public(), lifetime_s=60, now=NOW
    )
    fake = reply.model_copy(
        update={
            "certificate": fake_cert.to_bytes(),
            "revocation_list": rogue.revocation_list.to_bytes(),
        }
    )
    with pytest.raises(Exception) as info:  # noqa: PT011 - the list or the cert, either refuses
        accept_enroll_reply(token, identity, fake, NOW + 1)
    assert type(info.value).__name__ in {"CertificateSignatureInvalid"}
    # Expired by the time it arrives.
    with pytest.raises(CertificateExpired):
        accept_enroll_reply(token, identity, reply, NOW + 3600)


def test_rollback_refused(mesh: Mesh) -> None:
    _, identity, first = _enroll(mesh, node_id="dev-1")
    old_list = mesh.authority.revocation_list
    mesh.authority.revoke("dev-9", now=NOW)
    trust = first.trust
    trust.update_revocation_list(mesh.authority.revocation_list)
    token = mesh.token()
    reply = mesh.server.handle_enroll(build_enroll_request(token, identity, "dev-1"))
    stale = reply.model_copy(update={"revocation_list": old_list.to_bytes()})
    with pytest.raises(RevocationListRollback):
        accept_enroll_reply(token, identity, stale, NOW + 1, trust=trust)
    renewed = mesh.server.handle_renew(build_renew_request(first.certificate))
    with pytest.raises(RevocationListRollback):
        accept_renew_reply(
            identity,
            first.certificate,
            renewed.model_copy(update={"revocation_list": old_list.to_bytes()}),
            trust,
            NOW + 1,
        )


def test_renew_same_keys_new_serial(mesh: Mesh) -> None:
    _, identity, result = _enroll(mesh, "end", roles=("sensor",))
    reply = _wire(
        mesh.server.handle_renew(
            build_renew_request(result.certificate), sender="dev-1", now=NOW + 1800
        )
    )
    assert isinstance(reply, RenewReply)
    new = accept_renew_reply(identity, result.certificate, reply, result.trust, NOW + 1801)
    cert = new.unverified_certificate()
    assert cert.serial != result.cert.serial
    assert cert.public_keys() == result.cert.public_keys()
    assert (cert.node_id, cert.tier, cert.roles) == ("dev-1", Tier.END, ("sensor",))
    assert cert.not_after == NOW + 1800 + 3600
    assert mesh.audits[-1].kind == "cert.renewed"
    assert mesh.audits[-1].outcome == "success"


def test_renew_refusals(mesh: Mesh) -> None:
    _, identity, result = _enroll(mesh, node_id="dev-1")
    request = build_renew_request(result.certificate)
    with pytest.raises(CertificateExpired, match="re-enroll"):
        mesh.server.handle_renew(request, now=NOW + 3600)
    with pytest.raises(AuthenticationError):
        mesh.server.handle_renew(request, sender="dev-2")
    with pytest.raises(CertificateMalformed):
        mesh.server.handle_renew(b"garbage")
    # (a certificate that changes the roles, for the client-side check below)
    good = mesh.authority.issue(
        "dev-1", Tier.END, ("admin",), identity.public(), lifetime_s=60, now=NOW
    )
    mesh.authority.revoke("dev-1", now=NOW)
    with pytest.raises(CertificateRevoked):
        mesh.server.handle_renew(request)
    from securemesh.crypto import Authority

    other = Authority.create("other", now=NOW)
    foreign = other.issue("x-1", Tier.END, (), identity.public(), lifetime_s=60, now=NOW)
    with pytest.raises(UnknownIssuer):
        mesh.server.handle_renew(foreign)
    outcomes = [(a.kind, a.outcome) for a in mesh.audits if a.kind == "cert.renewed"]
    assert outcomes == [
        ("cert.renewed", "failure"),
        ("cert.renewed", "failure"),
        ("cert.renewed", "failure"),
        ("cert.renewed", "denied"),
        ("cert.renewed", "failure"),
    ]
    # A reply that changes the roles is refused by the client.
    # (dev-1 is revoked now; use a fresh trust for the client-side check)
    trust = TrustStore({"mesh": mesh.authority.verify_key})
    bad = RenewReply(certificate=good.to_bytes(), revocation_list=result.revocation_list.to_bytes())
    with pytest.raises(AuthenticationError, match="roles"):
        accept_renew_reply(identity, result.certificate, bad, trust, NOW + 1)


def _delegated_edge(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    _token, edge, result = _enroll(
        mesh, "edge", node_id="edge-1", roles=("gateway",), delegate=True
    )
    assert result.authority_certificate is not None
    da = DelegatedAuthority(result.authority_certificate, edge.signer)
    store = TokenStore(tmp_path_factory.mktemp("edge") / "tokens.db", clock=lambda: NOW)
    audits: list[object] = []
    server = EnrollmentServer(
        da,
        store,
        server_certificate=result.certificate,
        lifetime_s=600,
        trust=result.trust,
        revocation_list=lambda: mesh.authority.revocation_list,
        clock=lambda: NOW,
        audit_hook=audits.append,
    )
    return edge, result, da, store, server


def test_delegated_edge_enrolls_device_but_not_edges(
    mesh: Mesh, tmp_path_factory: pytest.TempPathFactory
) -> None:
    edge, _edge_result, da, store, server = _delegated_edge(mesh, tmp_path_factory)
    # The edge issues an `end` token; the device enrolls with the edge alone (no cloud call).
    token = store.create(
        authority_id="mesh",
        root_key=mesh.authority.verify_key,
        server_key=edge.curve_public,
        server_id="edge-1",
        endpoint="tcp://127.0.0.1:7101",
        issuer="edge-1",
        tier="end",
        roles=("sensor",),
        ttl_s=60,
        name_prefix=da.name_prefix,
        now=NOW,
    )
    assert token.name_prefix == "edge-1."
    device = NodeIdentity.generate()
    # The token tells the device the edge's namespace: an id outside it fails early.
    with pytest.raises(LocalError, match=re.escape("choose an id starting with 'edge-1.'")):
        build_enroll_request(token, device, "dev-7")
    # A request for an id outside it (a token without the hint) is refused by the server,
    # which leaves the token usable.
    unhinted = dataclasses.replace(token, name_prefix=None)
    with pytest.raises(AuthorizationError, match="outside this edge's namespace"):
        server.handle_enroll(build_enroll_request(unhinted, device, "dev-7"))
    assert store.usable(token.token_id, now=NOW)
    reply = _wire(server.handle_enroll(build_enroll_request(token, device, "edge-1.dev-7")))
    assert isinstance(reply, EnrollReply)
    result = accept_enroll_reply(token, device, reply, NOW + 1, node_id="edge-1.dev-7")
    assert result.cert.issuer == "edge-1"
    assert result.issuer_certificate is not None
    # Anyone trusting only the root verifies the device's chain.
    verify_certificate(
        result.certificate,
        trust=mesh.authority.trust_store(),
        now=NOW + 1,
        intermediates=[result.issuer_certificate],
    )
    # The delegate renews its own devices.
    renew = server.handle_renew(build_renew_request(result.certificate), sender="edge-1.dev-7")
    accept_renew_reply(device, result.certificate, renew, result.trust, NOW + 2)
    # Edge/cloud tokens in the edge's store are refused (even if someone writes one there).
    for tier in ("edge", "cloud"):
        bad = store.create(
            authority_id="mesh",
            root_key=mesh.authority.verify_key,
            server_key=edge.curve_public,
            server_id="edge-1",
            endpoint="tcp://127.0.0.1:7101",
            issuer="edge-1",
            tier=tier,
            ttl_s=60,
            now=NOW,
        )
        with pytest.raises(AuthorizationError):
            server.handle_enroll(
                build_enroll_request(bad, NodeIdentity.generate(), f"edge-1.x-{tier}")
            )
        assert store.usable(bad.token_id, now=NOW)
    # And the library refuses to let the delegate sign such a certificate at all.
    with pytest.raises(LocalError):
        da.issue("edge-1.x-edge", Tier.EDGE, (), device.public(), lifetime_s=60, now=NOW)
    # Revoking the edge at the root cuts off everything it issued.
    mesh.authority.revoke("edge-1", now=NOW)
    trust = mesh.authority.trust_store()
    with pytest.raises(CertificateRevoked):
        verify_certificate(
            result.certificate, trust=trust, now=NOW + 1, intermediates=[result.issuer_certificate]
        )


def test_delegate_certificate_unrequested_or_missing(mesh: Mesh) -> None:
    token = mesh.token("edge", delegate=True)
    edge = NodeIdentity.generate()
    reply = mesh.server.handle_enroll(build_enroll_request(token, edge, "edge-1"))
    plain = dataclasses.replace(token, delegate=False)
    with pytest.raises(AuthenticationError, match="unrequested"):
        accept_enroll_reply(plain, edge, reply, NOW + 1)
    with pytest.raises(AuthenticationError, match="promised"):
        accept_enroll_reply(
            token, edge, reply.model_copy(update={"authority_certificate": None}), NOW + 1
        )


@settings(max_examples=200)
@given(st.binary(max_size=600))
def test_enroll_bodies_decode_strictly(data: bytes) -> None:
    for model in (EnrollRequest, EnrollReply, RenewRequest, RenewReply):
        with contextlib.suppress(ValidationError):  # anything else fails the test
            model.model_validate_json(data, strict=True)


def test_body_fields_are_canonical_base64url(mesh: Mesh) -> None:
    token = mesh.token()
    request = build_enroll_request(token, NodeIdentity.generate(), "dev-1")
    text = request.model_dump_json()
    assert "=" not in text
    assert "+" not in text
    assert "/" not in text
    padded = text.replace(f'"{_b64(request.token_id)}"', f'"{_b64(request.token_id)}=="')
    with pytest.raises(ValidationError):
        EnrollRequest.model_validate_json(padded, strict=True)
    with pytest.raises(ValidationError):
        EnrollRequest.model_validate_json(text.replace('"version":1', '"version":1,"tier":"cloud"'))


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_signed_certificate_type_accepted_by_renew(mesh: Mesh) -> None:
    _, _, result = _enroll(mesh)
    reply = mesh.server.handle_renew(result.certificate)
    assert (
        SignedCertificate.from_bytes(reply.certificate).unverified_certificate().node_id == "dev-1"
    )


def test_delegation_and_root_self_renewal(
    mesh: Mesh, tmp_path_factory: pytest.TempPathFactory
) -> None:
    edge, edge_result, da, _store, server = _delegated_edge(mesh, tmp_path_factory)
    # The edge renews its delegated-authority certificate at the root like any other.
    assert edge_result.authority_certificate is not None
    reply = mesh.server.handle_renew(
        build_renew_request(edge_result.authority_certificate), sender="edge-1", now=NOW + 100
    )
    renewed = accept_renew_reply(
        edge, edge_result.authority_certificate, reply, edge_result.trust, NOW + 101
    )
    assert renewed.unverified_certificate().delegation is not None
    server.set_delegated_authority(DelegatedAuthority(renewed, edge.signer))
    token = server.tokens.create(
        authority_id="mesh",
        root_key=mesh.authority.verify_key,
        server_key=edge.curve_public,
        server_id="edge-1",
        endpoint="tcp://127.0.0.1:7101",
        issuer="edge-1",
        tier="end",
        ttl_s=600,
        now=NOW,
    )
    device = NodeIdentity.generate()
    out = server.handle_enroll(build_enroll_request(token, device, "edge-1.dev-2"), now=NOW + 102)
    assert out.issuer_certificate == renewed.to_bytes()
    with pytest.raises(LocalError):
        mesh.server.set_delegated_authority(da)  # the root is not a delegate
    # The cloud has no parent: it renews its own certificate with its own server.
    own = mesh.server.handle_renew(build_renew_request(mesh.cloud_cert), now=NOW + 5)
    cloud_new = accept_renew_reply(
        mesh.cloud, mesh.cloud_cert, own, mesh.authority.trust_store(), NOW + 6
    )
    assert cloud_new.unverified_certificate().node_id == "cloud-1"


def test_reply_optional_fields_are_absent_on_the_wire_and_null_is_still_accepted(
    mesh: Mesh,
) -> None:
    """protocol.md §3.1: an optional field's canonical form is absent, not null."""
    from securemesh.crypto.signing import Ed25519Signer
    from securemesh.enroll import reply_frames
    from securemesh.wire import decode, parse_body

    token = mesh.token("end")
    identity = NodeIdentity.generate()
    reply = mesh.server.handle_enroll(build_enroll_request(token, identity, "dev-1"))
    assert reply.issuer_certificate is None
    assert reply.authority_certificate is None
    signer = Ed25519Signer.generate()
    frames = reply_frames(
        reply,
        server_id="cloud-1",
        signer=signer,
        recipient="dev-1",
        correlation_id=bytes(range(16)),
        sequence=1,
        now=NOW,
    )
    body = decode(frames).verify_signature(signer.verify_key).body_bytes
    assert b"null" not in body
    assert b"issuer_certificate" not in body
    assert b"authority_certificate" not in body
    assert parse_body(EnrollReply, body) == reply
    # what servers sent before the rule (explicit nulls) still parses to the same reply
    assert b'"issuer_certificate":null' in reply.model_dump_json().encode()
    assert parse_body(EnrollReply, reply.model_dump_json().encode()) == reply
