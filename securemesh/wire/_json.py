"""Strict JSON for envelope bodies (protocol.md §3.1): one meaning per byte string.

Theory of operation
-------------------
A body is parsed by :func:`parse_body` in two passes, both of which must pass:

1. ``model.model_validate_json(data, strict=True)`` (pydantic-core): RFC 8259
   JSON in UTF-8 (no BOM, no trailing bytes, no control characters or lone
   surrogates in strings), then the model's strict types (``1`` is not
   ``1.0``, ``"1"`` is not ``1``, ``true`` is not ``1``), bounds and
   ``extra="forbid"``.
2. :func:`check_strict_json`: what pydantic-core lets through but another
   parser would read differently — **duplicate keys** in any object
   (pydantic keeps the last, other parsers the first or refuse: a parser
   differential, RFC 8259 §4 "names SHOULD be unique", RFC 7493 §2.3 I-JSON
   "MUST NOT"), and the non-JSON constants ``NaN``, ``Infinity``,
   ``-Infinity`` (pydantic-core accepts them for floats).

Pass 2 is cheap because pass 1 already proved the text is valid JSON:

* fewer than two ``:`` bytes (every key is followed by one) and no ``NaN`` /
  ``Infinity`` bytes: nothing to refuse (``{}``, ``{"data": ...}``,
  ``{"version": 1}`` cost three C-level byte scans);
* else one regular-expression pass lists every string token in order — in
  valid JSON a ``"`` outside a string always opens the next string, so the
  matches are exactly the string tokens — and keeps those followed by ``:``
  (the keys of *all* objects). If those raw keys are pairwise distinct and
  none holds a backslash escape, no object can hold a duplicate (two equal keys
  without escapes are equal bytes);
* otherwise (a repeated raw key — maybe in sibling objects, which is fine —
  an escaped key, or ``NaN``/``Infinity`` bytes that may sit in a string):
  :func:`json.loads` with a pairs hook decides exactly.

Measured (``timeit``, best of many runs on a loaded 2-core machine): a
``node.report`` body costs 2.2 µs in pass 1 and 3.4 µs in pass 2 (always
running :func:`json.loads` with the hook: 6.9 µs); a ``node.hello`` with
two certificates 8 µs either way (long strings dominate). Only bodies a
handler parses pay it — the bus itself never parses bodies, so the bus
benchmark (``bench/bus.py``) does not move.

Encoding (:func:`dump_body`): an optional field's canonical form is
*absent*, not ``null`` (protocol.md §3.1), so a model is serialised with
``exclude_none=True`` — unless one of its fields (or a nested model's) is
required *and* nullable, where dropping the ``null`` would make the body
invalid; such models are serialised as they are.

A refusal is a :class:`~securemesh.errors.DecodeError` (reason ``malformed``)
whose ``public_detail`` names *where* and *what* failed (pydantic's error
location and type, e.g. ``attachment: missing``), never an input value, at
most :data:`MAX_DETAIL` characters: the node sends it in ``mesh.error`` to an
authenticated, authorized requester (protocol.md §7.2).
"""

from __future__ import annotations

import functools
import json
import re
import typing
from typing import TYPE_CHECKING, Any, Final, TypeVar

from securemesh.errors import DecodeError

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

__all__ = [
    "MAX_DETAIL",
    "check_strict_json",
    "dump_body",
    "loads_strict",
    "parse_body",
    "validation_detail",
]

M = TypeVar("M", bound="BaseModel")

#: Longest ``public_detail`` (``mesh.error`` messages are at most 256 characters).
MAX_DETAIL: Final = 200
_MAX_ERRORS: Final = 4
_SAFE_LOC = re.compile(r"[A-Za-z0-9_]{1,32}")
#: A JSON string token, and whether a ``:`` follows it (then it is a key).
_STRING = re.compile(rb'"([^"\\]*(?:\\.[^"\\]*)*)"(\s*:)?')  # "unrolled loop" form: fast


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DecodeError("duplicate key in a JSON object")
    return obj


def _constant(name: str) -> Any:
    raise DecodeError(f"{name} is not JSON")


def loads_strict(data: bytes | str) -> Any:
    """:func:`json.loads` refusing duplicate keys and NaN/Infinity; :class:`DecodeError` else."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except DecodeError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DecodeError("not a JSON document") from exc


def _keys_distinct(data: bytes) -> bool:
    """True if the raw keys of all objects in ``data`` (valid JSON) are distinct, unescaped."""
    keys = [key for key, colon in _STRING.findall(data) if colon]
    return len(set(keys)) == len(keys) and b"\\" not in b"".join(keys)


def check_strict_json(data: bytes) -> None:
    """Refuse duplicate keys and NaN/Infinity in ``data``, which must already be valid JSON
    (pass 1 of :func:`parse_body`; the fast paths rely on it)."""
    constant = b"NaN" in data or b"Infinity" in data
    if not constant and (data.count(b":") < 2 or _keys_distinct(data)):
        return  # no key repeated, no constant: nothing to refuse
    try:
        loads_strict(data)
    except DecodeError as exc:
        exc.public_detail = str(exc)
        raise


def validation_detail(exc: ValidationError) -> str:
    """``loc: type`` of the first few errors, e.g. ``attachment: missing``; no input values.

    Location parts that are not list indices or short identifiers (e.g. an
    unknown key the peer invented) are shown as ``?``.
    """
    parts: list[str] = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False)[
        :_MAX_ERRORS
    ]:
        loc = ".".join(
            str(p) if isinstance(p, int) or _SAFE_LOC.fullmatch(str(p)) else "?" for p in err["loc"]
        )
        parts.append(f"{loc or 'body'}: {err['type']}")
    return "; ".join(parts)[:MAX_DETAIL]


def parse_body(model: type[M], data: bytes) -> M:
    """Parse ``data`` strictly as ``model`` (module docstring); :class:`DecodeError` else."""
    try:
        value = model.model_validate_json(data, strict=True)
    except ValueError as exc:  # pydantic's ValidationError is one; import it only now
        import pydantic  # noqa: PLC0415 - lazy: keeps `import securemesh.wire` light

        if not isinstance(exc, pydantic.ValidationError):
            raise
        error = DecodeError(f"body is not a valid {model.__name__}")
        error.public_detail = validation_detail(exc)
        raise error from exc
    check_strict_json(data)
    return value


def _nullable(annotation: object) -> bool:
    return annotation is None or type(None) in typing.get_args(annotation)


def _models_in(annotation: object) -> list[type[BaseModel]]:
    from pydantic import BaseModel  # noqa: PLC0415 - lazy, as in parse_body

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


@functools.cache
def _omit_none_is_safe(model: type[BaseModel], _depth: int = 0) -> bool:
    """True unless ``model`` (or a model nested in it) has a required, nullable field."""
    if _depth > 8:
        return False
    for field in model.model_fields.values():
        if field.is_required() and _nullable(field.annotation):
            return False
        for inner in _models_in(field.annotation):
            if inner is not model and not _omit_none_is_safe(inner, _depth + 1):
                return False
    return True


def dump_body(model: BaseModel) -> bytes:
    """UTF-8 JSON of ``model`` in canonical form: optional fields that are ``None`` omitted."""
    exclude_none = _omit_none_is_safe(type(model))
    return model.model_dump_json(exclude_none=exclude_none).encode("utf-8")
