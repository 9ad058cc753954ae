"""HE payloads: ciphertext chunks, public contexts (structure check, then TenSEAL), job bodies.

Already fuzzed elsewhere (not repeated): random bytes into the two structure
checks; one byte set in a real ciphertext (tests/he/test_he_core.py).
Here: multi-edit mutations (truncation, extension, swapped and duplicated
slices, zeroed runs) of real frames through the whole loader, i.e. into
SEAL's parser wherever the structure check lets them pass, where a crash
would take the aggregator down; a ciphertext of another key under the same
preset loads (documented: it is indistinguishable from a poisoned input);
mutated public contexts through ``load_public_context``; every HE
message body model.
"""

from __future__ import annotations

import functools

from fuzz_support import body_inputs, fuzz, mutated, run
from hypothesis import given
from hypothesis import strategies as st

from securemesh.errors import DecodeError
from securemesh.he import (
    SecretContext,
    encrypt_vector,
    get_preset,
    load_chunk,
    load_public_context,
)
from securemesh.he import _messages as he_messages
from securemesh.wire._json import parse_body

FAST = get_preset("fast-4096")


@functools.cache
def _world() -> tuple[SecretContext, bytes, bytes, bytes]:
    owner, stranger = SecretContext(FAST), SecretContext(FAST)
    chunk = encrypt_vector(owner.public, [0.25] * 8)[0]
    foreign = encrypt_vector(stranger.public, [0.25] * 8)[0]
    return owner, owner.public_bytes(), chunk, foreign


@fuzz(60)
@given(st.data())
def test_a_mutated_ciphertext_chunk_is_refused_or_loads(data: st.DataObject) -> None:
    owner, _, chunk, foreign = _world()
    frame = data.draw(
        st.one_of(mutated(chunk), mutated(foreign), st.sampled_from([chunk, foreign]))
    )
    vec = run("he.load_chunk", lambda: load_chunk(owner.public.ts, FAST, frame, 8), DecodeError)
    if vec is not None:
        # A same-preset ciphertext of another key loads (docs/he.md, threat model:
        # indistinguishable from a poisoned input); what loads is one chunk of 8.
        assert vec.size() == 8


@fuzz(20)  # TenSEAL parses ~130 kB per input: 15 ms each
@given(st.data())
def test_a_mutated_public_context_is_refused_or_is_the_preset(data: st.DataObject) -> None:
    _, blob, _, _ = _world()
    frame = data.draw(st.one_of(mutated(blob), st.binary(max_size=300)))
    public = run("he.load_public_context", lambda: load_public_context(frame, FAST), DecodeError)
    if public is not None:
        assert not public.ts.has_secret_key()
        assert public.ts.global_scale == FAST.scale


BODY_MODELS = sorted(
    (
        value
        for value in vars(he_messages).values()
        if isinstance(value, type)
        and value.__module__ == he_messages.__name__
        and hasattr(value, "model_validate_json")
    ),
    key=lambda m: m.__name__,
)


@fuzz(60)
@given(st.sampled_from(BODY_MODELS).flatmap(lambda m: st.tuples(st.just(m), body_inputs(m))))
def test_he_bodies_parse_strictly(case: tuple[type, bytes]) -> None:
    model, data = case
    value = run(f"he.body.{model.__name__}", lambda: parse_body(model, data), DecodeError)
    if value is not None:
        assert parse_body(model, value.model_dump_json().encode()) == value
