"""Strict JSON bodies (protocol.md §3.1): duplicate keys, constants, canonical optional fields."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from securemesh.errors import DecodeError
from securemesh.messages import ErrorReply, NodeHello, NodeReport
from securemesh.wire import dump_body, loads_strict, parse_body
from securemesh.wire._json import MAX_DETAIL, check_strict_json


class Inner(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    name: str
    note: str | None = None


class Outer(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    count: int = 0
    ratio: float = 0.0
    label: str | None = None
    items: list[Inner] = Field(default_factory=list)
    extra: dict[str, int] = Field(default_factory=dict)


class Nullable(BaseModel):
    """A required, nullable field: ``null`` must stay on the wire."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    value: int | None


keys = st.text(st.characters(codec="utf-8"), max_size=8)  # (utf-8: no surrogates)
scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def _dump_with_duplicate(value: dict[str, Any], key: str) -> str:
    """``value`` as JSON text with ``key`` written twice at the top level."""
    body = json.dumps(value)
    first = json.dumps({key: 1})[1:-1]
    return "{" + first + ("," + body[1:] if len(body) > 2 else "}")


@given(json_values)
def test_every_json_document_without_duplicates_parses_as_json_does(value: object) -> None:
    text = json.dumps(value)
    assert loads_strict(text.encode()) == json.loads(text)
    check_strict_json(text.encode())


@given(st.dictionaries(keys, json_values, max_size=4), keys)
def test_a_duplicate_key_at_any_position_is_refused(value: dict[str, Any], key: str) -> None:
    value = {**value, key: "x"}
    text = _dump_with_duplicate(value, key)
    with pytest.raises(DecodeError, match="duplicate key"):
        loads_strict(text.encode())
    with pytest.raises(DecodeError, match="duplicate key"):
        check_strict_json(text.encode())


@given(keys, st.sampled_from(["[{0}]", '{{"a":{0}}}', '[1,{{"b":[{0}]}}]']))
def test_a_duplicate_key_in_a_nested_object_is_refused(key: str, frame: str) -> None:
    k = json.dumps(key)
    nested = frame.format("{" + f"{k}:1,{k}:2" + "}")
    with pytest.raises(DecodeError):
        check_strict_json(nested.encode())


def test_duplicates_spelled_differently_are_still_duplicates() -> None:
    # "a" and "\u0061" are the same key after decoding
    with pytest.raises(DecodeError):
        parse_body(Outer, b'{"label":"x","\\u006cabel":"y"}')


def test_the_same_key_in_sibling_objects_is_fine() -> None:
    got = parse_body(Outer, b'{"items":[{"name":"a"},{"name":"b"}]}')
    assert [i.name for i in got.items] == ["a", "b"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"count":1,"count":2}',
        b'{"ratio":NaN}',
        b'{"ratio":Infinity}',
        b'{"ratio":-Infinity}',
        b'{"items":[{"name":"a","name":"b"}]}',
        b'{"extra":{"k":1,"k":2}}',
    ],
)
def test_what_pydantic_alone_accepts_is_refused(body: bytes) -> None:
    Outer.model_validate_json(body, strict=True)  # the differential: pydantic takes it
    with pytest.raises(DecodeError) as info:
        parse_body(Outer, body)
    assert info.value.reason == "malformed"
    assert info.value.public_detail


def test_constants_inside_strings_are_just_text() -> None:
    assert parse_body(Outer, b'{"label":"NaN Infinity"}').label == "NaN Infinity"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "json_invalid"),  # an empty body is not {}
        (b"{}x", "json_invalid"),
        (b"\xef\xbb\xbf{}", "json_invalid"),  # no byte-order mark
        (b'{"count":1.0}', "int_type"),  # 1.0 is not an integer
        (b'{"count":"1"}', "int_type"),
        (b'{"count":true}', "int_type"),
        (b'{"count":01}', "json_invalid"),
        (b'{"label":"a\x01"}', "json_invalid"),  # raw control character
        (b'{"label":"\\ud800"}', "json_invalid"),  # lone surrogate
        (b"[]", "model_type"),
    ],
)
def test_strict_json_refusals(body: bytes, why: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_body(Outer, body)
    assert why in info.value.public_detail


def test_whitespace_order_and_number_forms_are_free() -> None:
    a = parse_body(Outer, b' {\n "ratio" : 1 ,\t"count" : -0 } ')
    b = parse_body(Outer, b'{"count":0,"ratio":1.0}')
    c = parse_body(Outer, b'{"count":0,"ratio":1e0}')
    assert a == b == c


def test_the_detail_names_fields_but_never_echoes_values() -> None:
    secret = "s3cret-value-" * 3
    body = json.dumps({"certificates": [secret] * 9, "surprise key!": secret}).encode()
    with pytest.raises(DecodeError) as info:
        parse_body(NodeHello, body)
    detail = info.value.public_detail
    assert "certificates: too_long" in detail
    assert "?: extra_forbidden" in detail
    assert secret not in detail
    assert "surprise" not in detail
    assert len(detail) <= MAX_DETAIL


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_decode_error_with_a_bounded_detail(data: bytes) -> None:
    detail = ""
    try:
        parse_body(NodeReport, data)
    except DecodeError as exc:
        detail = exc.public_detail
    assert len(detail) <= MAX_DETAIL
    assert detail.isprintable()


# ------------------------------------------------------------ optional fields


def test_optional_fields_are_absent_not_null() -> None:
    assert dump_body(NodeHello(certificates=["AA"])) == b'{"certificates":["AA"]}'
    body = dump_body(Outer(items=[Inner(name="a")]))
    assert b"null" not in body
    assert parse_body(Outer, body) == Outer(items=[Inner(name="a")])


def test_null_for_an_optional_field_is_still_accepted_as_absent() -> None:
    assert parse_body(NodeHello, b'{"certificates":["AA"],"attachment":null}') == NodeHello(
        certificates=["AA"]
    )


def test_a_required_nullable_field_keeps_its_null() -> None:
    body = dump_body(Nullable(value=None))
    assert body == b'{"value":null}'
    assert parse_body(Nullable, body) == Nullable(value=None)


@given(
    count=st.integers(-(2**63), 2**63 - 1),
    label=st.none() | st.text(max_size=10),
    notes=st.lists(st.none() | st.text(max_size=5), max_size=3),
)
def test_dump_then_parse_round_trips(
    count: int, label: str | None, notes: list[str | None]
) -> None:
    value = Outer(count=count, label=label, items=[Inner(name="n", note=n) for n in notes])
    body = dump_body(value)
    assert parse_body(Outer, body) == value
    assert dump_body(parse_body(Outer, body)) == body  # one canonical encoding


def test_error_reply_message_is_bounded_by_its_model() -> None:
    with pytest.raises(DecodeError):
        parse_body(ErrorReply, json.dumps({"code": "x", "message": "m" * 257}).encode())


ascii_keys = st.text(st.sampled_from('ab"\\:/ \u00e9'), max_size=3)
nested = st.recursive(
    st.integers(0, 3) | ascii_keys,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(st.tuples(ascii_keys, inner), max_size=4).map(
            lambda pairs: "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"
        )
    ),
    max_leaves=10,
)


@given(st.lists(st.tuples(ascii_keys, nested), max_size=5), st.booleans())
def test_the_fast_scan_agrees_with_a_full_parse(pairs: list[tuple[str, Any]], ascii: bool) -> None:
    """Objects built as text (so keys may repeat, quotes and colons may sit in strings,
    keys may be escaped): check_strict_json refuses exactly what json.loads with a
    duplicate-refusing hook refuses."""

    def text(value: Any) -> str:
        if isinstance(value, str) and value.startswith("{"):
            return value  # an object already written as text
        if isinstance(value, list):
            return "[" + ",".join(text(v) for v in value) + "]"
        return json.dumps(value, ensure_ascii=ascii)

    doc = "{" + ",".join(f"{json.dumps(k, ensure_ascii=ascii)} : {text(v)}" for k, v in pairs) + "}"
    data = doc.encode()
    try:
        loads_strict(data)
        expected = True
    except DecodeError:
        expected = False
    try:
        check_strict_json(data)
        got = True
    except DecodeError:
        got = False
    assert got == expected, doc
