"""Body encoding and the Message view: canonical JSON for dicts, strict refusals both ways."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import securemesh.sdk
from securemesh.errors import DecodeError, EncodeError
from securemesh.sdk._message import encode_body, parse_json_object

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
JSON_OBJECTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6)


def test_public_surface() -> None:
    assert sorted(securemesh.sdk.__all__) == [
        "AsyncDevice",
        "Device",
        "DeviceAudit",
        "DeviceRequester",
        "Enrollment",
        "Message",
        "Reply",
        "TaskHandle",
        "he_contribute",
        "he_key_owner",
        "storage_client",
        "stored_object_reader",
        "submit_over_objects",
    ]
    for name in securemesh.sdk.__all__:
        assert getattr(securemesh.sdk, name) is not None
    with pytest.raises(AttributeError):
        securemesh.sdk.Nope  # noqa: B018


@given(JSON_OBJECTS)
def test_dict_bodies_round_trip_canonically(body: dict[str, Any]) -> None:
    encoded = encode_body(body)
    assert isinstance(encoded, bytes)
    assert parse_json_object(encoded) == body
    # canonical: the same dict in any key order encodes to the same bytes
    reordered = dict(reversed(list(body.items())))
    assert encode_body(reordered) == encoded
    assert (
        encoded
        == json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"x": math.nan},
        {"x": [1.0, math.inf]},
        {"x": b"bytes"},
        {1: "not a str key"},
        {"x": {1, 2}},
        {"x": object()},
        [1, 2],
        "text",
        3,
        None,
    ],
)
def test_non_json_bodies_are_refused(bad: object) -> None:
    with pytest.raises(EncodeError):
        encode_body(bad)


def test_deep_nesting_is_refused_both_ways() -> None:
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(100):
        cursor["a"] = {}
        cursor = cursor["a"]
    with pytest.raises(EncodeError):
        encode_body(deep)
    with pytest.raises(DecodeError):
        parse_json_object(b'{"a":' * 100 + b"{}" + b"}" * 100)
    with pytest.raises(DecodeError):  # beyond the C parser's recursion limit
        parse_json_object(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize(
    "raw", [b"[1]", b'"s"', b"NaN", b'{"x": NaN}', b'{"x": Infinity}', b"\xff", b"", b"{"]
)
def test_parse_refuses_non_objects_and_non_json(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_json_object(raw)


def test_bytes_and_models_pass_through() -> None:
    from pydantic import BaseModel

    class Body(BaseModel):
        n: int

    model = Body(n=1)
    assert encode_body(model) is model
    assert encode_body(b'{"n":1}') == b'{"n":1}'
    assert encode_body(bytearray(b"{}")) == b"{}"
