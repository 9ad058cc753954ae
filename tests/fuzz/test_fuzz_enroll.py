"""First contact: the ``enroll.request`` envelope an unenrolled stranger sends, and join tokens.

Already fuzzed elsewhere (not repeated): random strings and character edits
into ``JoinToken.decode``; random bytes into the four body models
(tests/enroll/). Here: the whole first-contact decoder
(``open_enroll_request``: envelope, tentative body, signature under the key
in that body, sender binding) on edited frames of a real request, never
accepting an edited one; schema-shaped and structurally broken bodies of the
enrollment models; the token text format under byte-level mutation.
"""

from __future__ import annotations

from fuzz_support import body_inputs, fuzz, mutated, run
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_wire import frame_edits

from securemesh.crypto import NodeIdentity, Tier
from securemesh.enroll import JoinToken
from securemesh.enroll._client import open_enroll_request, request_frames
from securemesh.enroll._protocol import EnrollReply, EnrollRequest, RenewReply, RenewRequest
from securemesh.errors import DecodeError, RemoteError
from securemesh.wire._json import parse_body

NOW = 1_800_000_000
TOKEN = JoinToken(
    authority_id="mesh",
    root_key=bytes([1]) * 32,
    server_key=bytes([2]) * 32,
    server_id="cloud-1",
    endpoint="tcp://127.0.0.1:7100",
    token_id=bytes([3]) * 16,
    secret=bytes([4]) * 32,
    expires_at=NOW + 3600,
    tier=Tier.END,
    roles=("sensor",),
)
DEVICE = NodeIdentity.from_seeds(bytes([5]) * 32, bytes([6]) * 32, bytes([7]) * 32)
FRAMES = [
    bytes(f)
    for f in request_frames(TOKEN, DEVICE, "dev-1", now=NOW, correlation_id=bytes([9]) * 16)[0]
]
TEXT = TOKEN.encode()


@fuzz(100)
@given(frame_edits(FRAMES))
def test_an_edited_enroll_request_is_never_accepted(frames: list[bytes]) -> None:
    opened = run("enroll.open_enroll_request", lambda: open_enroll_request(frames))
    if opened is not None:
        assert frames == FRAMES
        assert opened[1].node_id == "dev-1"


@fuzz(50)
@given(
    st.sampled_from([EnrollRequest, EnrollReply, RenewRequest, RenewReply]).flatmap(
        lambda m: st.tuples(st.just(m), body_inputs(m))
    )
)
def test_enrollment_bodies_parse_strictly(case: tuple[type, bytes]) -> None:
    model, data = case
    value = run(f"enroll.body.{model.__name__}", lambda: parse_body(model, data), DecodeError)
    if value is not None:
        assert parse_body(model, value.model_dump_json().encode()) == value


@fuzz(100)
@given(st.one_of(mutated(TEXT.encode()), st.binary(max_size=300)))
def test_join_token_text_decodes_strictly(raw: bytes) -> None:
    text = raw.decode("utf-8", "replace")
    token = run("enroll.JoinToken.decode", lambda: JoinToken.decode(text), RemoteError)
    if token is not None:
        assert token.encode() == text or token == TOKEN
