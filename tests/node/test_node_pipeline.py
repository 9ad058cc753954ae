"""The verification pipeline, step by step: each rejection class, its reason, and acceptance.

The pipeline is sans-I/O (frames + peer key in, VerifiedMessage or Rejection
out), so these tests build envelopes with the wire encoder and feed them in
directly, with an injected clock.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from node_testlib import Fixture, Member

from securemesh.crypto import NodeIdentity
from securemesh.messages import NODE_HELLO, NodeHello, b64e
from securemesh.node import (
    Directory,
    FirstContactMessage,
    Pipeline,
    Rejection,
    VerifiedMessage,
)
from securemesh.policy import AllowTypes, PolicyConfig
from securemesh.wire import ZERO_ID, Flags, Limits, ReplayGuard, encode_mac, encode_signed

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Rig:
    """A pipeline for node ``edge-1`` that knows ``dev-1`` (end) and ``edge-2`` (edge)."""

    def __init__(self) -> None:
        self.fx = Fixture(now=NOW)
        self.clock = Clock()
        self.me = self.fx.member("edge-1", "edge")
        self.dev = self.fx.member("dev-1", "end", ["sensor"])
        self.dev2 = self.fx.member("dev-2", "end")
        self.hop = self.fx.member("edge-2", "edge")
        self.directory = Directory(self.fx.trust(), clock=self.clock)
        for m in (self.me, self.dev, self.dev2, self.hop):
            self.directory.add_certificate(m.cert, now=NOW)
        self.replies: set[bytes] = set()
        self.sessions: dict[bytes, object] = {}
        policy = PolicyConfig.model_validate(
            {"allow": [{"types": ["app.*"]}, {"types": ["sensor.*"], "roles": ["sensor"]}]}
        ).build()
        self.pipeline = Pipeline(
            node_id="edge-1",
            directory=self.directory,
            policy=policy,
            limits=Limits(max_body=1024),
            replay=ReplayGuard(),
            clock=self.clock,
            sessions=self.sessions,  # type: ignore[arg-type]
            reply_ok=lambda env: env.correlation_id in self.replies,
        )
        self.seq = 0

    def signed(
        self,
        member: Member,
        *,
        msg_type: str = "app.x",
        recipient: str = "edge-1",
        body: bytes = b"{}",
        sequence: int | None = None,
        ts: float | None = None,
        flags: Flags = Flags.NONE,
        cid: bytes = ZERO_ID,
        signer: NodeIdentity | None = None,
    ) -> list[bytes]:
        self.seq += 1
        return [
            bytes(f)
            for f in encode_signed(
                msg_type=msg_type,
                sender=member.node_id,
                recipient=recipient,
                sequence=self.seq if sequence is None else sequence,
                timestamp_ms=int((self.clock.now if ts is None else ts) * 1000),
                body=body,
                signer=(signer or member.identity).signer,
                flags=flags,
                correlation_id=cid,
            )
        ]

    def process(
        self, frames: list[bytes], peer: Member | bytes, *, from_parent: bool = False
    ) -> VerifiedMessage | Rejection:
        key = peer if isinstance(peer, bytes) else peer.identity.curve_public
        return self.pipeline.process(key, frames, from_parent=from_parent)

    def reason(self, frames: list[bytes], peer: Member | bytes, **kw: bool) -> str:
        result = self.process(frames, peer, **kw)
        assert isinstance(result, Rejection), result
        return result.reason


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_accepts_a_valid_direct_message(rig: Rig) -> None:
    msg = rig.process(rig.signed(rig.dev), rig.dev)
    assert isinstance(msg, VerifiedMessage)
    assert msg.sender == "dev-1"
    assert not msg.relayed
    assert msg.certificate is not None
    assert msg.certificate.node_id == "dev-1"
    assert msg.peer_info is not None
    assert msg.peer_info.tier == "end"


def test_a_verified_message_cannot_be_made_outside_the_pipeline(rig: Rig) -> None:
    """Only the pipeline's checks make a VerifiedMessage; a forged one never reaches a handler."""
    made = rig.process(rig.signed(rig.dev), rig.dev)
    assert isinstance(made, VerifiedMessage)
    # the same verified parts, but assembled by hand: refused, with or without a guessed token
    with pytest.raises(TypeError, match="only by the Pipeline"):
        VerifiedMessage(made.envelope, made.certificate, made.peer, relayed=False)
    for token in (None, object(), True, "pipeline"):
        with pytest.raises(TypeError, match="only by the Pipeline"):
            VerifiedMessage(
                made.envelope, made.certificate, made.peer, relayed=False, _made_by=token
            )


def test_rejections_carry_context(rig: Rig) -> None:
    frames = rig.signed(rig.dev, signer=rig.dev2.identity)
    result = rig.process(frames, rig.dev)
    assert isinstance(result, Rejection)
    assert result.reason == "bad_auth"
    assert result.sender_claimed == "dev-1"
    assert result.msg_type == "app.x"
    assert result.peer == rig.dev.identity.curve_public
    assert result.at == NOW


def test_forged_signature(rig: Rig) -> None:
    assert rig.reason(rig.signed(rig.dev, signer=rig.dev2.identity), rig.dev) == "bad_auth"


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_bit_is_rejected(rig: Rig, data: st.DataObject) -> None:
    frames = rig.signed(rig.dev, body=b'{"v":1}')
    index = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[index])
    pos = data.draw(st.integers(0, len(frame) - 1))
    bit = data.draw(st.integers(0, 7))
    frame[pos] ^= 1 << bit
    frames[index] = bytes(frame)
    result = rig.process(frames, rig.dev)
    assert isinstance(result, Rejection)
    assert result.reason in {
        "malformed",
        "bad_auth",
        "unknown_sender",
        "unauthorized",
        "oversize",
        "stale",
        "replayed",
        "clock_skew",
    }


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=300), max_size=6))
def test_garbage_is_rejected_never_raises(rig: Rig, frames: list[bytes]) -> None:
    result = rig.process(frames, rig.dev)
    assert isinstance(result, Rejection)
    assert result.reason in {"malformed", "oversize"}


def test_oversize_body(rig: Rig) -> None:
    frames = rig.signed(rig.dev, body=b'"' + b"a" * 2000 + b'"')
    assert rig.reason(frames, rig.dev) == "oversize"


def test_replay_and_stale_and_skew(rig: Rig) -> None:
    frames = rig.signed(rig.dev, sequence=10_000)
    assert isinstance(rig.process(frames, rig.dev), VerifiedMessage)
    assert rig.reason(frames, rig.dev) == "replayed"
    assert rig.reason(rig.signed(rig.dev, sequence=10_000 - 9000), rig.dev) == "stale"
    assert rig.reason(rig.signed(rig.dev, ts=NOW - 3600), rig.dev) == "clock_skew"
    # out of order inside the window is fine
    assert isinstance(rig.process(rig.signed(rig.dev, sequence=9_990), rig.dev), VerifiedMessage)


def test_forged_signature_does_not_burn_sequence_numbers(rig: Rig) -> None:
    forged = rig.signed(rig.dev, sequence=50, signer=rig.dev2.identity)
    assert rig.reason(forged, rig.dev) == "bad_auth"
    assert isinstance(rig.process(rig.signed(rig.dev, sequence=50), rig.dev), VerifiedMessage)


def test_unknown_expired_and_revoked_senders(rig: Rig) -> None:
    stranger = rig.fx.member("dev-9", "end")
    assert rig.reason(rig.signed(stranger), stranger) in {"bad_auth", "unknown_sender"}
    rig.clock.now = NOW + 7200  # past every certificate's not_after
    assert rig.reason(rig.signed(rig.dev), rig.dev) == "certificate_expired"
    rig.clock.now = NOW
    rl = rig.fx.authority.revoke("dev-1", now=NOW)
    rig.directory.update_revocation_list(rl.to_bytes())
    assert rig.reason(rig.signed(rig.dev), rig.dev) == "certificate_revoked"
    assert isinstance(rig.process(rig.signed(rig.dev2), rig.dev2), VerifiedMessage)


def test_sender_must_be_bound_to_the_connection(rig: Rig) -> None:
    # dev-2's key sends a message claiming to be dev-1, signed by dev-1's key:
    # a device relays nothing
    frames = rig.signed(rig.dev)
    assert rig.reason(frames, rig.dev2) == "bad_auth"
    # an unknown CURVE key (not enrolled, not a token)
    assert rig.reason(frames, bytes(32)) == "bad_auth"


def test_relayed_by_an_edge_is_accepted_when_signed_by_origin(rig: Rig) -> None:
    msg = rig.process(rig.signed(rig.dev), rig.hop)
    assert isinstance(msg, VerifiedMessage)
    assert msg.relayed


def test_mac_envelopes_are_hop_local(rig: Rig) -> None:
    frames = [
        bytes(f)
        for f in encode_mac(
            msg_type="app.x",
            sender="dev-1",
            recipient="edge-1",
            sequence=1,
            timestamp_ms=int(NOW * 1000),
            body=b"{}",
            session_id=b"s" * 16,
            key=b"k" * 32,
        )
    ]
    assert rig.reason(frames, rig.hop) == "bad_auth"  # relayed MAC
    assert rig.reason(frames, rig.dev) == "bad_auth"  # no such session

    class S:
        peer_id = "dev-1"
        peer_key = rig.dev.identity.curve_public
        recv_key = b"k" * 32

    rig.sessions[b"s" * 16] = S()
    assert isinstance(rig.process(frames, rig.dev), VerifiedMessage)
    assert rig.reason(frames, rig.dev) == "replayed"
    assert rig.reason(frames, rig.dev2) == "bad_auth"  # session belongs to dev-1's link
    S.recv_key = b"x" * 32  # the receiver's key differs from the sender's
    frames3 = [
        bytes(f)
        for f in encode_mac(
            msg_type="app.x",
            sender="dev-1",
            recipient="edge-1",
            sequence=2,
            timestamp_ms=int(NOW * 1000),
            body=b"{}",
            session_id=b"s" * 16,
            key=b"k" * 32,
        )
    ]
    assert rig.reason(frames3, rig.dev) == "bad_auth"


def test_authorization_by_type_tier_and_role(rig: Rig) -> None:
    assert rig.reason(rig.signed(rig.dev, msg_type="admin.wipe"), rig.dev) == "unauthorized"
    assert isinstance(
        rig.process(rig.signed(rig.dev, msg_type="sensor.r"), rig.dev), VerifiedMessage
    )
    assert rig.reason(rig.signed(rig.dev2, msg_type="sensor.r"), rig.dev2) == "unauthorized"
    rig.pipeline.set_type_policy("admin.wipe", AllowTypes(types=["admin.wipe"], tiers=["end"]))
    assert isinstance(
        rig.process(rig.signed(rig.dev, msg_type="admin.wipe"), rig.dev), VerifiedMessage
    )


def test_broadcasts_only_from_the_parent(rig: Rig) -> None:
    assert rig.reason(rig.signed(rig.hop, recipient=""), rig.hop) == "unauthorized"
    msg = rig.process(rig.signed(rig.hop, recipient=""), rig.hop, from_parent=True)
    assert isinstance(msg, VerifiedMessage)


def test_replies_must_answer_a_request(rig: Rig) -> None:
    cid = hashlib.sha256(b"c").digest()[:16]
    frames = rig.signed(rig.dev, flags=Flags.REPLY, cid=cid, msg_type="anything.at-all")
    assert rig.reason(frames, rig.dev) == "unexpected_reply"
    rig.replies.add(cid)
    frames = rig.signed(rig.dev, flags=Flags.REPLY, cid=cid, msg_type="anything.at-all")
    assert isinstance(rig.process(frames, rig.dev), VerifiedMessage)


def test_hello_teaches_the_senders_certificate(rig: Rig) -> None:
    rig.pipeline.set_type_policy(NODE_HELLO, AllowTypes(types=[NODE_HELLO]))
    newcomer = rig.fx.member("dev-7", "end")
    body = NodeHello(certificates=[b64e(newcomer.cert.to_bytes())]).model_dump_json().encode()
    frames = rig.signed(newcomer, msg_type=NODE_HELLO, body=body, recipient="")
    msg = rig.process(frames, newcomer, from_parent=True)
    assert isinstance(msg, VerifiedMessage)
    assert "dev-7" in rig.directory
    # a hello carrying someone else's certificate for this connection is refused
    other = rig.fx.member("dev-8", "end")
    body = NodeHello(certificates=[b64e(other.cert.to_bytes())]).model_dump_json().encode()
    frames = rig.signed(newcomer, msg_type=NODE_HELLO, body=body, recipient="")
    assert rig.reason(frames, newcomer, from_parent=True) == "bad_auth"
    # a garbage hello body
    frames = rig.signed(newcomer, msg_type=NODE_HELLO, body=b'{"certificates": 5}', recipient="")
    assert rig.reason(frames, rig.fx.member("x", "end").identity.curve_public) == "malformed"


def test_a_hello_certificate_is_learned_only_after_the_hello_signature_verifies(rig: Rig) -> None:
    """A hello signed by another key than its certificate's teaches the directory nothing."""
    rig.pipeline.set_type_policy(NODE_HELLO, AllowTypes(types=[NODE_HELLO]))
    newcomer = rig.fx.member("dev-7", "end")
    forger = rig.fx.member("dev-9", "end")  # holds dev-7's link, not dev-7's signing key
    body = NodeHello(certificates=[b64e(newcomer.cert.to_bytes())]).model_dump_json().encode()
    frames = rig.signed(
        newcomer, msg_type=NODE_HELLO, body=body, recipient="", signer=forger.identity
    )
    assert rig.reason(frames, newcomer, from_parent=True) == "bad_auth"
    assert "dev-7" not in rig.directory
    # a MAC hello cannot carry a certificate either (nothing to check it against)
    mac = [
        bytes(f)
        for f in encode_mac(
            msg_type=NODE_HELLO,
            sender="dev-7",
            recipient="",
            sequence=77,
            timestamp_ms=int(NOW * 1000),
            body=body,
            key=b"k" * 32,
            session_id=b"s" * 16,
        )
    ]
    assert rig.reason(mac, newcomer, from_parent=True) == "bad_auth"
    assert "dev-7" not in rig.directory
    # a renewed certificate of a known node is not swapped in by a forged hello either
    renewed = rig.fx.authority.issue(
        "dev-1", "end", ["sensor"], forger.identity.public(), lifetime_s=7200, now=NOW
    )
    body = NodeHello(certificates=[b64e(renewed.to_bytes())]).model_dump_json().encode()
    frames = rig.signed(rig.dev, msg_type=NODE_HELLO, body=body, recipient="")
    before = rig.directory.signed_certificate("dev-1")
    assert rig.reason(frames, forger, from_parent=True) == "bad_auth"
    assert rig.directory.signed_certificate("dev-1") == before
    # signed by the right key, the same hello teaches it
    frames = rig.signed(newcomer, msg_type=NODE_HELLO, body=_hello(newcomer), recipient="")
    assert isinstance(rig.process(frames, newcomer, from_parent=True), VerifiedMessage)
    assert "dev-7" in rig.directory


def _hello(member: Member) -> bytes:
    return NodeHello(certificates=[b64e(member.cert.to_bytes())]).model_dump_json().encode()


def test_first_contact_from_a_token_key(rig: Rig) -> None:
    newcomer = rig.fx.member("dev-new", "end")
    token_key = newcomer.identity.curve_public  # any 32 bytes works as the test's token key
    frames = rig.signed(newcomer, msg_type="enroll.request", body=b'{"k":1}')
    assert rig.reason(frames, token_key) == "bad_auth"  # not admitted yet
    rig.directory.admit_token_key(token_key, NOW + 60)
    assert rig.reason(frames, token_key) == "unauthorized"  # type not first-contact
    rig.pipeline.allow_first_contact("enroll.request", lambda body: newcomer.identity.verify_key)
    msg = rig.process(rig.signed(newcomer, msg_type="enroll.request"), token_key)
    assert isinstance(msg, FirstContactMessage)  # a type of its own, not a VerifiedMessage
    assert not isinstance(msg, VerifiedMessage)
    assert msg.first_contact
    assert msg.certificate is None
    # other types from the token key stay refused; a wrong self-key fails
    assert rig.reason(rig.signed(newcomer), token_key) == "unauthorized"
    rig.pipeline.allow_first_contact("enroll.request", lambda body: rig.dev.identity.verify_key)
    frames = rig.signed(newcomer, msg_type="enroll.request")
    assert rig.reason(frames, token_key) == "bad_auth"
    # expired token key
    rig.clock.now = NOW + 61
    assert rig.reason(rig.signed(newcomer, msg_type="enroll.request"), token_key) == "bad_auth"


def test_first_contact_never_moves_a_claimed_senders_replay_window(rig: Rig) -> None:
    """Issue #9 item 1: a token peer claiming ``dev-1`` at sequence 2^63 moves nothing of dev-1."""
    newcomer = rig.fx.member("dev-new", "end")
    token_key = bytes(range(32))
    rig.directory.admit_token_key(token_key, NOW + 60)
    rig.pipeline.allow_first_contact("enroll.request", lambda body: newcomer.identity.verify_key)
    forged = [
        bytes(f)
        for f in encode_signed(
            msg_type="enroll.request",
            sender="dev-1",  # a claimed identity, self-signed by the newcomer's key
            recipient="edge-1",
            sequence=2**63,
            timestamp_ms=int(NOW * 1000),
            body=b"{}",
            signer=newcomer.identity.signer,
        )
    ]
    msg = rig.process(forged, token_key)
    assert isinstance(msg, FirstContactMessage)
    assert msg.first_contact
    # the same message again is a replay on that connection...
    assert rig.reason(forged, token_key) == "replayed"
    # ...but dev-1's own window never moved: its next message is accepted
    assert isinstance(rig.process(rig.signed(rig.dev, sequence=5), rig.dev), VerifiedMessage)
    stats = rig.pipeline.replay_stats()
    assert stats["senders"]["senders"] == 1
    assert stats["first_contact"]["senders"] == 1
    # spraying made-up sender ids from one token connection grows nothing
    for i in range(50):
        frames = [
            bytes(f)
            for f in encode_signed(
                msg_type="enroll.request",
                sender=f"made-up-{i}",
                recipient="edge-1",
                sequence=2**63 + 1 + i,
                timestamp_ms=int(NOW * 1000),
                body=b"{}",
                signer=newcomer.identity.signer,
            )
        ]
        assert isinstance(rig.process(frames, token_key), FirstContactMessage)
    stats = rig.pipeline.replay_stats()
    assert stats["senders"]["senders"] == 1
    assert stats["first_contact"]["senders"] == 1
