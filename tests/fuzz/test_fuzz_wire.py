"""The wire envelope (multipart form) and the session handshake's state machine.

Already fuzzed elsewhere (not repeated): random byte strings / frame lists
and near-valid headers into ``decode``; byte edits of the *packed* form
(tests/wire/test_wire_fuzz.py); random and bit-flipped handshake messages
into the message decoder (tests/session/test_session_handshake.py).
Here: edits of the *multipart* form a ZeroMQ peer really sends (a frame
mutated, frames swapped, dropped, duplicated or appended), verified with
the right key, never accepted unless identical, and decoded bodies that
round-trip; handshake messages mutated in flight into a live initiator or
responder never establish a session.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fuzz_support import fuzz, mutated, run
from hypothesis import given
from hypothesis import strategies as st

from securemesh import session as sm
from securemesh.crypto.signing import Ed25519Signer
from securemesh.errors import LocalError, RemoteError, UnknownIssuer
from securemesh.wire import AuthMode, decode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "wire"))
from wire_testlib import MAC_KEY, SIGNER, as_bytes, maced, signed

ORIGINALS = {
    AuthMode.SIGNED: as_bytes(signed()),
    AuthMode.MAC: as_bytes(maced()),
}


@st.composite
def frame_edits(draw: st.DrawFn, frames: list[bytes]) -> list[bytes]:
    out = list(frames)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["mutate", "swap", "drop", "dup", "append"]))
        i = draw(st.integers(0, len(out) - 1)) if out else 0
        if op == "mutate" and out:
            out[i] = draw(mutated(out[i]))
        elif op == "swap" and len(out) > 1:
            j = draw(st.integers(0, len(out) - 1))
            out[i], out[j] = out[j], out[i]
        elif op == "drop" and out:
            del out[i]
        elif op == "dup" and out:
            out.insert(draw(st.integers(0, len(out))), out[i])
        else:
            out.append(draw(st.binary(max_size=40)))
    return out


@fuzz(100)
@given(
    st.sampled_from(list(AuthMode)).flatmap(
        lambda m: st.tuples(st.just(m), frame_edits(ORIGINALS[m]))
    )
)
def test_edited_multipart_envelopes_never_verify_unless_identical(
    case: tuple[AuthMode, list[bytes]],
) -> None:
    mode, frames = case
    unverified = run("wire.decode(multipart)", lambda: decode(frames))
    if unverified is None:
        return
    if unverified.auth_mode is AuthMode.SIGNED:
        envelope = run("wire.verify", lambda: unverified.verify_signature(SIGNER.verify_key))
    else:
        envelope = run("wire.verify", lambda: unverified.verify_mac(MAC_KEY))
    if envelope is not None:
        assert frames == ORIGINALS[mode]


# ------------------------------------------------------------------ handshake

SIGNERS = {
    "node-a": Ed25519Signer.from_seed(bytes([1]) * 32),
    "node-b": Ed25519Signer.from_seed(bytes([2]) * 32),
}


def _resolve(node_id: str) -> bytes:
    try:
        return SIGNERS[node_id].verify_key
    except KeyError:
        raise UnknownIssuer(node_id) from None


def _pair() -> tuple[sm.Handshake, sm.Handshake]:
    clock = lambda: 1000.0  # noqa: E731
    initiator = sm.Handshake.initiator(
        node_id="node-a",
        peer_id="node-b",
        signer=SIGNERS["node-a"],
        resolve_peer=_resolve,
        clock=clock,
    )
    responder = sm.Handshake.responder(
        node_id="node-b", signer=SIGNERS["node-b"], resolve_peer=_resolve, clock=clock
    )
    return initiator, responder


def _transcript() -> tuple[bytes, bytes, bytes]:
    i, r = _pair()
    hello = i.initiate()
    accept = r.receive(hello)
    assert accept is not None
    finish = i.receive(accept)
    assert finish is not None
    return hello, accept, finish


HELLO, ACCEPT, FINISH = _transcript()


@fuzz(60)
@given(st.sampled_from(["hello", "accept", "finish"]), st.data())
def test_a_handshake_message_mutated_in_flight_never_establishes(
    step: str, data: st.DataObject
) -> None:
    """A live pair runs the handshake; the attacker rewrites one message on the way."""
    initiator, responder = _pair()
    hello = initiator.initiate()
    if step == "hello":
        bad = data.draw(st.one_of(mutated(hello), st.just(HELLO)))
        accept = run(
            "session.responder.receive(hello)",
            lambda: responder.receive(bad),
            (RemoteError, LocalError),
        )
        if accept is not None:
            finish = run(
                "session.initiator.receive(accept)",
                lambda: initiator.receive(accept),
                (RemoteError, LocalError),
            )
            if finish is not None:
                # only an unchanged hello can get this far: the transcript binds it
                assert bad == hello
        return
    accept = responder.receive(hello)
    assert accept is not None
    if step == "accept":
        bad = data.draw(
            st.one_of(mutated(accept), st.just(ACCEPT))
        )  # ACCEPT: a replay from another run
        finish = run(
            "session.initiator.receive(accept)",
            lambda: initiator.receive(bad),
            (RemoteError, LocalError),
        )
        if finish is not None:
            assert bad == accept
            assert initiator.state is sm.State.ESTABLISHED
        else:
            assert initiator.state is not sm.State.ESTABLISHED
        return
    finish = initiator.receive(accept)
    assert finish is not None
    bad = data.draw(st.one_of(mutated(finish), st.just(FINISH)))
    run(
        "session.responder.receive(finish)",
        lambda: responder.receive(bad),
        (RemoteError, LocalError),
    )
    assert (responder.state is sm.State.ESTABLISHED) == (bad == finish)
