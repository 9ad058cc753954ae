"""The sans-I/O session handshake and the sessions it makes, driven by an in-memory pair."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh import session as sm
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import (
    AuthenticationError,
    CertificateRevoked,
    DecodeError,
    LocalError,
    RemoteError,
    SizeLimitExceeded,
    UnexpectedMessage,
    UnknownIssuer,
)


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Directory:
    """Stands in for certificate verification: node id -> verify key, or raise."""

    keys: dict[str, bytes] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)

    def __call__(self, node_id: str) -> bytes:
        if node_id in self.revoked:
            raise CertificateRevoked(node_id)
        try:
            return self.keys[node_id]
        except KeyError:
            raise UnknownIssuer(node_id) from None


@dataclass
class Pair:
    """Like h11's ConnectionPair: an initiator and a responder wired in memory."""

    initiator: sm.Handshake
    responder: sm.Handshake
    directory: Directory
    clock: FakeClock
    signers: dict[str, Ed25519Signer]

    def run(self) -> tuple[sm.Session, sm.Session]:
        hello = self.initiator.initiate()
        accept = self.responder.receive(hello)
        assert accept is not None
        finish = self.initiator.receive(accept)
        assert finish is not None
        assert self.responder.receive(finish) is None
        return self.initiator.session, self.responder.session


SIGNERS = {name: Ed25519Signer.from_seed(bytes([i + 1]) * 32) for i, name in enumerate("abc")}


def make_pair(
    limits: sm.SessionLimits | None = None,
    rng: Callable[[int], bytes] | None = None,
) -> Pair:
    directory = Directory(keys={f"node-{k}": s.verify_key for k, s in SIGNERS.items()})
    clock = FakeClock()
    initiator = sm.Handshake.initiator(
        node_id="node-a",
        peer_id="node-b",
        signer=SIGNERS["a"],
        resolve_peer=directory,
        clock=clock,
        limits=limits,
        rng=rng,
    )
    responder = sm.Handshake.responder(
        node_id="node-b",
        signer=SIGNERS["b"],
        resolve_peer=directory,
        clock=clock,
        limits=limits,
        rng=rng,
    )
    return Pair(initiator, responder, directory, clock, dict(SIGNERS))


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


# ------------------------------------------------------------------ success


def test_handshake_establishes_matching_sessions() -> None:
    pair = make_pair()
    a, b = pair.run()
    assert a.session_id == b.session_id
    assert len(a.session_id) == 16
    assert a.peer_id == "node-b"
    assert b.peer_id == "node-a"
    assert pair.initiator.state is sm.State.ESTABLISHED
    assert pair.responder.state is sm.State.ESTABLISHED
    assert_matching(a, b)


def assert_matching(a: sm.Session, b: sm.Session) -> None:
    """What one side sends with, the other receives with; directions differ."""
    a_send, a_recv = a.envelope_mac_keys()
    b_send, b_recv = b.envelope_mac_keys()
    assert (a_send, a_recv) == (b_recv, b_send)
    assert a_send != a_recv
    assert len(a_send) == 32


def test_message_sizes_are_fixed_and_within_limits() -> None:
    pair = make_pair()
    hello = pair.initiator.initiate()
    accept = pair.responder.receive(hello)
    assert accept is not None
    finish = pair.initiator.receive(accept)
    assert finish is not None
    assert len(hello) <= sm.MAX_HELLO_SIZE
    assert len(accept) == sm.ACCEPT_SIZE
    assert len(finish) == sm.FINISH_SIZE


def test_sessions_differ_between_handshakes() -> None:
    a1, _ = make_pair().run()
    a2, _ = make_pair().run()
    assert a1.session_id != a2.session_id


def test_repr_hides_keys() -> None:
    a, _ = make_pair().run()
    text = repr(a)
    assert "node-b" in text
    assert "key" not in text.lower()


# ------------------------------------------------------------ wrong identity


def test_responder_with_wrong_identity_key_is_refused() -> None:
    pair = make_pair()
    # The directory says node-b's key is c's: R signs with b's real key.
    pair.directory.keys["node-b"] = SIGNERS["c"].verify_key
    accept = pair.responder.receive(pair.initiator.initiate())
    assert accept is not None
    with pytest.raises(AuthenticationError):
        pair.initiator.receive(accept)
    assert pair.initiator.state is sm.State.FAILED


def test_initiator_with_wrong_identity_key_is_refused() -> None:
    pair = make_pair()
    pair.directory.keys["node-a"] = SIGNERS["c"].verify_key
    accept = pair.responder.receive(pair.initiator.initiate())
    assert accept is not None
    finish = pair.initiator.receive(accept)
    assert finish is not None
    with pytest.raises(AuthenticationError):
        pair.responder.receive(finish)
    assert pair.responder.state is sm.State.FAILED
    with pytest.raises(LocalError):
        _ = pair.responder.session


def test_impersonation_by_claiming_another_id_fails() -> None:
    """c signs, but claims to be a: the responder checks against a's key."""
    directory = Directory(keys={f"node-{k}": s.verify_key for k, s in SIGNERS.items()})
    mallory = sm.Handshake.initiator(
        node_id="node-a", peer_id="node-b", signer=SIGNERS["c"], resolve_peer=directory
    )
    responder = sm.Handshake.responder(
        node_id="node-b", signer=SIGNERS["b"], resolve_peer=directory
    )
    accept = responder.receive(mallory.initiate())
    assert accept is not None
    finish = mallory.receive(accept)
    assert finish is not None
    with pytest.raises(AuthenticationError):
        responder.receive(finish)


# ------------------------------------------------------------- unknown peer


@pytest.mark.parametrize("side", ["initiator", "responder"])
@pytest.mark.parametrize("how", ["unknown", "revoked"])
def test_unknown_or_revoked_peer_is_refused(side: str, how: str) -> None:
    pair = make_pair()
    victim = "node-a" if side == "responder" else "node-b"
    if how == "unknown":
        del pair.directory.keys[victim]
    else:
        pair.directory.revoked.add(victim)
    expected = UnknownIssuer if how == "unknown" else CertificateRevoked
    hello = pair.initiator.initiate()
    if side == "responder":
        with pytest.raises(expected):
            pair.responder.receive(hello)
        assert pair.responder.state is sm.State.FAILED
    else:
        accept = pair.responder.receive(hello)
        assert accept is not None
        with pytest.raises(expected):
            pair.initiator.receive(accept)
        assert pair.initiator.state is sm.State.FAILED


def test_hello_for_another_node_or_from_ourselves_is_refused() -> None:
    directory = Directory(keys={f"node-{k}": s.verify_key for k, s in SIGNERS.items()})
    to_c = sm.Handshake.initiator(
        node_id="node-a", peer_id="node-c", signer=SIGNERS["a"], resolve_peer=directory
    )
    responder = sm.Handshake.responder(
        node_id="node-b", signer=SIGNERS["b"], resolve_peer=directory
    )
    with pytest.raises(AuthenticationError):
        responder.receive(to_c.initiate())
    from_b = sm.Handshake.initiator(
        node_id="node-b", peer_id="node-c", signer=SIGNERS["b"], resolve_peer=directory
    )
    c = sm.Handshake.responder(node_id="node-c", signer=SIGNERS["c"], resolve_peer=directory)
    hello = sm.Hello.decode(from_b.initiate())
    reflected = sm.Hello(
        initiator_id="node-c", responder_id="node-c", nonce=hello.nonce, public_key=hello.public_key
    ).encode()
    with pytest.raises(AuthenticationError):
        c.receive(reflected)


# ---------------------------------------------------------------- tampering


# Every byte position of every message is flipped (with two different masks),
# split over a few parametrized cases so a failure names its byte range.
STRIDE = 8
MASKS = (0x01, 0x80)


@pytest.mark.parametrize("offset", range(STRIDE))
def test_tampered_hello_byte_fails_the_handshake(offset: int) -> None:
    size = len(make_pair().initiator.initiate())
    for index in range(offset, size, STRIDE):
        pair = make_pair()
        hello = flip(pair.initiator.initiate(), index, MASKS[index % 2])
        with pytest.raises(RemoteError):
            _complete(pair, hello)


def _complete(pair: Pair, hello: bytes) -> None:
    accept = pair.responder.receive(hello)
    assert accept is not None
    finish = pair.initiator.receive(accept)
    assert finish is not None
    pair.responder.receive(finish)


@pytest.mark.parametrize("offset", range(STRIDE))
def test_tampered_accept_byte_is_refused_by_the_initiator(offset: int) -> None:
    for index in range(offset, sm.ACCEPT_SIZE, STRIDE):
        pair = make_pair()
        accept = pair.responder.receive(pair.initiator.initiate())
        assert accept is not None
        with pytest.raises(RemoteError):
            pair.initiator.receive(flip(accept, index, MASKS[index % 2]))
        assert pair.initiator.state is sm.State.FAILED


@pytest.mark.parametrize("index", range(sm.FINISH_SIZE))
def test_tampered_finish_byte_is_refused_by_the_responder(index: int) -> None:
    pair = make_pair()
    accept = pair.responder.receive(pair.initiator.initiate())
    assert accept is not None
    finish = pair.initiator.receive(accept)
    assert finish is not None
    with pytest.raises(RemoteError):
        pair.responder.receive(flip(finish, index, 0x80))
    assert pair.responder.state is sm.State.FAILED


def test_truncated_and_extended_messages_are_refused() -> None:
    pair = make_pair()
    hello = pair.initiator.initiate()
    accept = pair.responder.receive(hello)
    assert accept is not None
    for bad in (accept[:-1], accept + b"\x00"):
        fresh = make_pair()
        fresh.initiator.initiate()
        with pytest.raises(DecodeError):
            fresh.initiator.receive(bad)
    with pytest.raises(SizeLimitExceeded):
        make_pair().responder.receive(b"\x01\x01" + bytes(sm.MAX_HANDSHAKE_MESSAGE_SIZE))


# ------------------------------------------------------------------- replay


def test_replayed_hello_to_a_new_responder_cannot_be_completed() -> None:
    pair = make_pair()
    hello = pair.initiator.initiate()
    accept = pair.responder.receive(hello)
    assert accept is not None
    finish = pair.initiator.receive(accept)
    assert finish is not None
    pair.responder.receive(finish)
    # An attacker replays the recorded HELLO and FINISH to a fresh responder.
    replay = make_pair().responder
    assert replay.receive(hello) is not None  # it answers with fresh n_R and ct ...
    with pytest.raises(AuthenticationError):  # ... so the old FINISH does not fit
        replay.receive(finish)


def test_replayed_accept_to_a_new_initiator_is_refused() -> None:
    pair = make_pair()
    accept = pair.responder.receive(pair.initiator.initiate())
    assert accept is not None
    other = make_pair()
    other.initiator.initiate()
    with pytest.raises(AuthenticationError):
        other.initiator.receive(accept)


def test_message_repeated_into_the_same_machine_is_unexpected() -> None:
    pair = make_pair()
    hello = pair.initiator.initiate()
    accept = pair.responder.receive(hello)
    assert accept is not None
    with pytest.raises(UnexpectedMessage):
        pair.responder.receive(hello)
    assert pair.responder.state is sm.State.FAILED
    with pytest.raises(LocalError):  # a failed handshake stays failed
        pair.responder.receive(hello)

    pair = make_pair()
    hello = pair.initiator.initiate()
    accept = pair.responder.receive(hello)
    assert accept is not None
    finish = pair.initiator.receive(accept)
    assert finish is not None
    pair.responder.receive(finish)
    with pytest.raises(UnexpectedMessage):  # ACCEPT again to an established initiator
        pair.initiator.receive(accept)
    with pytest.raises(UnexpectedMessage):  # FINISH again to an established responder
        pair.responder.receive(finish)


def test_local_misuse() -> None:
    pair = make_pair()
    with pytest.raises(LocalError):
        pair.responder.initiate()
    pair.initiator.initiate()
    with pytest.raises(LocalError):
        pair.initiator.initiate()
    with pytest.raises(LocalError):
        sm.Handshake.initiator(
            node_id="node-a", peer_id="node-a", signer=SIGNERS["a"], resolve_peer=Directory()
        )
    with pytest.raises(LocalError):
        sm.Handshake.responder(node_id="bad id", signer=SIGNERS["a"], resolve_peer=Directory())


# ---------------------------------------------------------- session lifetime


def test_a_session_needs_a_handshake_after_its_age_or_message_count() -> None:
    limits = sm.SessionLimits(max_age=100.0, max_messages=10)
    pair = make_pair(limits)
    a, b = pair.run()
    assert a.limits == b.limits == limits
    assert not a.needs_handshake(0)
    assert not a.needs_handshake(9)
    assert a.needs_handshake(10)
    pair.clock.now += 99.0
    assert not b.needs_handshake(0)
    pair.clock.now += 1.0
    assert a.needs_handshake(0)
    assert b.needs_handshake(0)
    for bad in ({"max_age": 0.0}, {"max_messages": 0}, {"max_age": float("nan")}):
        with pytest.raises(LocalError):
            sm.SessionLimits(**bad)  # type: ignore[arg-type]


def test_the_record_layer_is_gone() -> None:
    """Replay protection of session traffic is the wire's ReplayGuard, not a second window."""
    a, _ = make_pair().run()
    for name in ("seal", "open", "mac", "verify_mac"):
        assert not hasattr(a, name)
    assert not hasattr(sm, "SlidingWindow")


def test_deterministic_with_injected_rng_apart_from_mlkem() -> None:
    rng_state = random.Random(7)

    def rng(n: int) -> bytes:
        return rng_state.randbytes(n)

    hello1 = make_pair(rng=rng).initiator.initiate()
    rng_state.seed(7)
    hello2 = make_pair(rng=rng).initiator.initiate()
    assert hello1 == hello2


# ------------------------------------------------------- property-based tests


@settings(max_examples=300)
@given(st.binary(max_size=sm.MAX_HANDSHAKE_MESSAGE_SIZE + 10))
def test_decoder_rejects_or_round_trips_random_bytes(data: bytes) -> None:
    try:
        message = sm.decode_handshake_message(data)
    except DecodeError:
        return
    assert message.encode() == data


_VALID = make_pair()
_HELLO = _VALID.initiator.initiate()
_ACCEPT = _VALID.responder.receive(_HELLO)
assert _ACCEPT is not None
_FINISH = _VALID.initiator.receive(_ACCEPT)
assert _FINISH is not None


@settings(max_examples=300)
@given(
    st.sampled_from([_HELLO, _ACCEPT, _FINISH]),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 255)), max_size=4),
    st.integers(-3, 3),
)
def test_decoder_on_mutated_valid_messages(
    base: bytes, edits: list[tuple[int, int]], resize: int
) -> None:
    data = bytearray(base)
    for pos, mask in edits:
        data[pos % len(data)] ^= mask
    if resize < 0:
        del data[resize:]
    else:
        data += bytes(resize)
    try:
        message = sm.decode_handshake_message(bytes(data))
    except DecodeError:
        return
    assert message.encode() == bytes(data)


def test_handshake_expiry() -> None:
    directory = Directory(keys={f"node-{k}": s.verify_key for k, s in SIGNERS.items()})
    clock = FakeClock()
    initiator = sm.Handshake.initiator(
        node_id="node-a", peer_id="node-b", signer=SIGNERS["a"], resolve_peer=directory, clock=clock
    )
    responder = sm.Handshake.responder(
        node_id="node-b", signer=SIGNERS["b"], resolve_peer=directory, clock=clock
    )
    hello = initiator.initiate()
    clock.now += 9.0
    assert not initiator.expired(10.0)
    clock.now += 1.0
    assert initiator.expired(10.0)
    accept = responder.receive(hello)
    assert accept is not None
    initiator.receive(accept)
    assert not initiator.expired(10.0)  # established handshakes never expire


class _Net:
    """Delivers handshake messages between fresh handshakes in an adversarial order."""

    def __init__(self) -> None:
        self.pair = make_pair()
        self.log: list[bytes] = []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["i", "r"]), st.integers(0, 5)), max_size=8))
def test_adversarial_delivery_never_yields_mismatched_sessions(
    steps: list[tuple[str, int]],
) -> None:
    """Whatever an attacker replays to whom, both ends agree or someone fails."""
    net = _Net()
    pair = net.pair
    net.log.append(pair.initiator.initiate())
    for side, pick in steps:
        target = pair.initiator if side == "i" else pair.responder
        message = net.log[pick % len(net.log)]
        try:
            reply = target.receive(message)
        except (RemoteError, LocalError):
            continue
        if reply is not None:
            net.log.append(reply)
    i_state, r_state = pair.initiator.state, pair.responder.state
    if i_state is sm.State.ESTABLISHED and r_state is sm.State.ESTABLISHED:
        a, b = pair.initiator.session, pair.responder.session
        assert a.session_id == b.session_id
        assert_matching(a, b)
    if r_state is sm.State.ESTABLISHED:
        # R never completes without the real I having completed this very
        # handshake (I may have failed *later*, on a replayed message).
        a, b = pair.initiator.session, pair.responder.session
        assert a.session_id == b.session_id
        assert_matching(a, b)
