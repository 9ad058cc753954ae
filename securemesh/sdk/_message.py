"""Bodies in and out of the SDK: pydantic models, JSON dicts, raw bytes frames.

Theory of operation
-------------------
An envelope body (securemesh.wire) is UTF-8 JSON of at most ``limits.max_body``
bytes (64 KiB by default); bulk data travels in *raw frames* next to it
(``frames=``, up to ``limits.max_raw_frame`` each), which are signed with the
envelope but never parsed by the mesh.

**Sending** (:func:`encode_body`) accepts

* a pydantic model — serialised with ``model_dump_json()``; receivers parse it
  back strictly with ``msg.body(Model)`` (no coercion, unknown keys refused
  when the model says ``extra="forbid"``);
* a ``dict`` (``Mapping[str, object]``) — encoded *canonically* with
  :func:`json.dumps` (``sort_keys=True``, compact separators, UTF-8,
  ``allow_nan=False``). Only JSON values are accepted (str keys; str, int,
  float, bool, None, list/tuple, dict values); anything else (bytes, sets,
  NaN/Infinity, non-str keys, objects) raises
  :class:`~securemesh.errors.EncodeError` *before* anything is sent. The
  size limit is enforced by the wire encoder;
* ``bytes`` — taken as an already-encoded JSON body (it must still be valid
  JSON for the receiver's parser; use raw frames for arbitrary bytes).

**Receiving**: handlers and :meth:`Device.request` get a :class:`Message`,
a read-only view of a :class:`~securemesh.node.VerifiedMessage` — a message
that passed the whole verification pipeline (certificate, signature or
session MAC, replay window, policy). ``msg.body(Model)`` parses strictly;
``msg.json()`` parses a dict body with :func:`json.loads` and refuses a
non-object top level, duplicate keys, NaN/Infinity and pathological nesting
(:class:`~securemesh.errors.DecodeError`); ``msg.frames`` are the raw frames
as ``bytes`` (copies, safe to keep after the handler returns).

This module imports nothing heavy: pydantic is only imported when a model
is actually passed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from securemesh.errors import DecodeError, EncodeError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from securemesh.crypto.certs import Certificate
    from securemesh.node import VerifiedMessage

__all__ = ["Body", "Message", "Reply", "encode_body"]

M = TypeVar("M", bound="BaseModel")

#: What ``send``/``request``/a handler's return value may carry as a body.
Body: TypeAlias = "BaseModel | Mapping[str, Any] | bytes"

_MAX_DEPTH = 64


def _check_json(value: object, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise EncodeError(f"JSON body nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EncodeError("JSON bodies cannot carry NaN or Infinity")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_json(item, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodeError("JSON object keys must be strings")
            _check_json(item, depth + 1)
        return
    raise EncodeError(
        f"{type(value).__name__} is not a JSON value (send bytes as a raw frame instead)"
    )


def encode_body(body: object) -> BaseModel | bytes:
    """A body the node can send: the model itself, canonical JSON of a dict, or bytes."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, Mapping):
        _check_json(body, 0)
        return json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    from pydantic import BaseModel  # noqa: PLC0415 - lazy: only when a model is passed

    if isinstance(body, BaseModel):
        return body
    raise EncodeError(
        f"a body is a pydantic model, a dict or JSON bytes, not {type(body).__name__}"
    )


def parse_json_object(data: bytes) -> dict[str, Any]:
    """Strict JSON object parse of a (size-limited) body; DecodeError otherwise.

    Duplicate keys and NaN/Infinity are refused (protocol.md §3.1).
    """
    from securemesh.wire import loads_strict  # noqa: PLC0415 - lazy: keeps the SDK import light

    try:
        value = loads_strict(data)
    except DecodeError as exc:
        raise DecodeError("body is not a JSON document") from exc
    if not isinstance(value, dict):
        raise DecodeError("body is not a JSON object")
    try:
        _check_json(value, 0)
    except EncodeError as exc:
        raise DecodeError(str(exc)) from exc
    return value


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer with raw frames (return a bare model/dict/bytes when there are none)."""

    body: object
    frames: Sequence[bytes] = ()


class Message:
    """A verified message as the SDK hands it out (read-only view; see module docstring)."""

    __slots__ = ("_frames", "verified")

    def __init__(self, verified: VerifiedMessage) -> None:
        #: The underlying :class:`securemesh.node.VerifiedMessage`.
        self.verified = verified
        self._frames: tuple[bytes, ...] | None = None

    @property
    def sender(self) -> str:
        """The verified origin node id."""
        return self.verified.sender

    @property
    def msg_type(self) -> str:
        return self.verified.msg_type

    @property
    def is_request(self) -> bool:
        return self.verified.is_request

    @property
    def certificate(self) -> Certificate | None:
        """The sender's verified certificate (tier, roles, validity)."""
        return self.verified.certificate

    @property
    def body_bytes(self) -> bytes:
        return bytes(self.verified.body_bytes)

    def body(self, model: type[M]) -> M:
        """Parse the body strictly into ``model`` (DecodeError if it does not fit)."""
        return self.verified.body(model)

    def json(self) -> dict[str, Any]:
        """The body as a dict (DecodeError unless it is a JSON object)."""
        return parse_json_object(self.body_bytes)

    @property
    def frames(self) -> tuple[bytes, ...]:
        """The raw frames, copied to ``bytes``."""
        if self._frames is None:
            self._frames = tuple(bytes(f) for f in self.verified.raw_frames)
        return self._frames

    def __repr__(self) -> str:
        return f"Message(type={self.msg_type!r}, sender={self.sender!r})"
