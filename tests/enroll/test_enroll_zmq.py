"""First contact over real ZeroMQ, and the envelope checks on both sides."""

from __future__ import annotations

import dataclasses
import time

import pytest
from enroll_fixtures import NOW, Mesh
from enroll_support import running_endpoint

from securemesh.crypto import Authority, NodeIdentity, Tier
from securemesh.enroll import EnrollReply, build_enroll_request
from securemesh.enroll._client import (
    enroll_over_zmq,
    open_enroll_request,
    reply_frames,
    request_frames,
    verify_reply,
)
from securemesh.errors import (
    AuthenticationError,
    CertificateSignatureInvalid,
    DecodeError,
    TokenError,
    TransportError,
    UnexpectedMessage,
)
from securemesh.wire import Flags, encode_signed


def _live(mesh: Mesh, address: str, **kw: object):  # type: ignore[no-untyped-def]
    token = mesh.token(now=int(time.time()), **kw)  # type: ignore[arg-type]
    return dataclasses.replace(token, endpoint=address)


@pytest.fixture
def live_mesh(mesh: Mesh) -> Mesh:
    # Real clocks for the live tests (certificates must be valid "now").
    mesh.server._clock = time.time
    mesh.authority = Authority.create("mesh", now=time.time())
    mesh.cloud_cert = mesh.authority.issue(
        "cloud-1", Tier.CLOUD, (), mesh.cloud.public(), lifetime_s=3600, now=time.time()
    )
    from securemesh.enroll import EnrollmentServer

    mesh.server = EnrollmentServer(
        mesh.authority,
        mesh.store,
        server_certificate=mesh.cloud_cert,
        audit_hook=mesh.audits.append,
    )
    return mesh


def test_enroll_over_zmq_and_token_key_admission(live_mesh: Mesh) -> None:
    mesh = live_mesh
    mesh.store._clock = time.time
    with running_endpoint(mesh.server, mesh.store, mesh.cloud, "cloud-1") as endpoint:
        # The store's record endpoint is irrelevant: the token string carries the address.
        token = mesh.store.create(
            authority_id="mesh",
            root_key=mesh.authority.verify_key,
            server_key=mesh.cloud.curve_public,
            server_id="cloud-1",
            endpoint=endpoint.address,
            issuer="mesh",
            tier="end",
            roles=("sensor",),
            ttl_s=60,
        )
        identity = NodeIdentity.generate()
        result = enroll_over_zmq(token, identity, "dev-1", timeout=10)
        assert result.cert.node_id == "dev-1"
        assert result.cert.public_keys() == identity.public()
        # Used: ZAP no longer admits the token's key, so nothing answers.
        with pytest.raises(TransportError, match="refused this token's key"):
            enroll_over_zmq(token, NodeIdentity.generate(), "dev-2", timeout=0.5)
        # A token the server never issued: refused at ZAP as well.
        forged = dataclasses.replace(token, token_id=bytes(16), secret=bytes(range(32)))
        with pytest.raises(TransportError):
            enroll_over_zmq(forged, NodeIdentity.generate(), "dev-3", timeout=0.5)
        # A token naming another server key: the CURVE handshake cannot complete.
        wrong_server = dataclasses.replace(token, server_key=NodeIdentity.generate().curve_public)
        with pytest.raises(TransportError):
            enroll_over_zmq(wrong_server, NodeIdentity.generate(), "dev-4", timeout=0.5)
        assert endpoint.errors == []  # all refused before reaching the handler


def test_refused_request_gets_mesh_error(live_mesh: Mesh) -> None:
    mesh = live_mesh
    mesh.store._clock = time.time
    with running_endpoint(mesh.server, mesh.store, mesh.cloud, "cloud-1") as endpoint:
        token = mesh.store.create(
            authority_id="mesh",
            root_key=mesh.authority.verify_key,
            server_key=mesh.cloud.curve_public,
            server_id="cloud-1",
            endpoint=endpoint.address,
            issuer="mesh",
            tier="end",
            ttl_s=60,
        )
        mesh.authority.revoke("dev-bad", now=time.time())
        with pytest.raises(TokenError, match="refused"):
            enroll_over_zmq(token, NodeIdentity.generate(), "dev-bad", timeout=10)
        assert endpoint.errors == ["certificate_revoked"]
        enroll_over_zmq(token, NodeIdentity.generate(), "dev-good", timeout=10)


def test_open_enroll_request(mesh: Mesh) -> None:
    token = mesh.token()
    identity = NodeIdentity.generate()
    frames, corr = request_frames(token, identity, "dev-1", now=NOW)
    envelope, request = open_enroll_request(frames)
    assert (envelope.sender, envelope.correlation_id, request.node_id) == ("dev-1", corr, "dev-1")
    assert envelope.flags & Flags.REQUEST
    # Signed by another key than the body names.
    body = build_enroll_request(token, identity, "dev-1")
    other = NodeIdentity.generate()
    forged = encode_signed(
        msg_type="enroll.request", sender="dev-1", recipient="", sequence=1,
        timestamp_ms=NOW * 1000, body=body, signer=other,
    )  # fmt: skip
    with pytest.raises(AuthenticationError):
        open_enroll_request(forged)
    # Sender is not the requested node id.
    mismatched = encode_signed(
        msg_type="enroll.request", sender="dev-2", recipient="", sequence=1,
        timestamp_ms=NOW * 1000, body=body, signer=identity,
    )  # fmt: skip
    with pytest.raises(AuthenticationError):
        open_enroll_request(mismatched)
    wrong_type = encode_signed(
        msg_type="cert.renew", sender="dev-1", recipient="", sequence=1,
        timestamp_ms=NOW * 1000, body=body, signer=identity,
    )  # fmt: skip
    with pytest.raises(UnexpectedMessage):
        open_enroll_request(wrong_type)
    garbage = [frames[0], b"{not json", frames[-1]]
    with pytest.raises(DecodeError):
        open_enroll_request(garbage)
    flipped = [bytes(f) for f in frames]
    flipped[1] = flipped[1].replace(b'"dev-1"', b'"dev-9"')
    with pytest.raises(AuthenticationError):
        open_enroll_request(flipped)


def test_verify_reply_binds_the_server(mesh: Mesh) -> None:
    token = mesh.token()
    identity = NodeIdentity.generate()
    reply = mesh.server.handle_enroll(build_enroll_request(token, identity, "dev-1"))
    corr = b"\x07" * 16

    def frames(r: EnrollReply, signer: NodeIdentity, sender: str = "cloud-1") -> list[bytes]:
        return [
            bytes(f)
            for f in reply_frames(
                r,
                server_id=sender,
                signer=signer,
                recipient="dev-1",
                correlation_id=corr,
                sequence=1,
                now=NOW,
            )
        ]

    good = verify_reply(token, frames(reply, mesh.cloud), correlation_id=corr, now=NOW + 1)
    assert good == reply
    with pytest.raises(UnexpectedMessage):
        verify_reply(token, frames(reply, mesh.cloud), correlation_id=b"\x08" * 16, now=NOW)
    # Signed by someone else than the certified server.
    with pytest.raises(AuthenticationError):
        verify_reply(token, frames(reply, NodeIdentity.generate()), correlation_id=corr, now=NOW)
    with pytest.raises(AuthenticationError, match="token's server"):
        verify_reply(token, frames(reply, mesh.cloud, "cloud-2"), correlation_id=corr, now=NOW)
    # A server certificate for another CURVE key than the token's (a different socket).
    imposter = NodeIdentity.generate()
    imposter_cert = mesh.authority.issue(
        "cloud-1", Tier.CLOUD, (), imposter.public(), lifetime_s=60, now=NOW
    )
    swapped = reply.model_copy(update={"server_certificate": imposter_cert.to_bytes()})
    with pytest.raises(AuthenticationError, match="server key"):
        verify_reply(token, frames(swapped, imposter), correlation_id=corr, now=NOW)
    # A server certificate from another root.
    rogue = Authority.create("mesh", now=NOW)
    rogue_cert = rogue.issue("cloud-1", Tier.CLOUD, (), mesh.cloud.public(), lifetime_s=60, now=NOW)
    rogued = reply.model_copy(update={"server_certificate": rogue_cert.to_bytes()})
    with pytest.raises(CertificateSignatureInvalid):
        verify_reply(token, frames(rogued, mesh.cloud), correlation_id=corr, now=NOW)
    # An end device cannot pose as the server.
    dev_cert = mesh.authority.issue(
        "cloud-1", Tier.END, (), mesh.cloud.public(), lifetime_s=60, now=NOW
    )
    as_device = reply.model_copy(update={"server_certificate": dev_cert.to_bytes()})
    with pytest.raises(AuthenticationError, match="end device"):
        verify_reply(token, frames(as_device, mesh.cloud), correlation_id=corr, now=NOW)
