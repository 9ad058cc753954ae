"""Attachment statements: a node's own signed word that it is attached below a parent.

Theory of operation
-------------------
A ``route.announce`` tells a parent "these nodes are reachable through me".
Believing that on the announcer's word lets a compromised edge attract (read,
drop) the traffic of any device whose certificate it holds -- certificates
are public. So an upstream node sets or moves a route for node ``N`` only on
evidence **signed by N itself** that it is attached there:

* When a node says ``node.hello`` to its parent it MUST include an
  *attachment statement*: ``N`` signs {its node id, the parent's CURVE public
  key, a sequence number, a timestamp} with its certificate's Ed25519 key.
  The parent refuses a child's hello without one, checks it (signer = the
  hello's verified sender, parent key = its own) and keeps the latest one per
  child.
* The parent forwards the statements it holds in its ``route.announce``
  (``attachments``). The receiver accepts a route for ``N`` via the
  announcing link only if ``N``'s statement verifies with ``N``'s verified
  certificate, names the CURVE key of the announcing peer (or of a node whose
  route already is that link: deeper trees), and is **fresher** than the
  evidence it already holds for ``N``.
* Freshness is the statement's ``sequence``, drawn from the node's envelope
  sequence counter (the persisted, never reused :class:`~securemesh.wire.SequenceCounter`),
  so statements and envelopes of one node share one increasing order: a
  relayed, verified envelope from ``N`` (source learning) is evidence too,
  with its envelope sequence.

A rogue edge thus cannot take over the route of a device attached elsewhere:
it holds no statement of that device naming it, and an old statement from a
time the device *was* attached to it loses against the device's newer one
at its current edge. A device that moves to another edge says hello there
with a newer statement and its route follows (legitimate moves keep working).

Encoding (big-endian; ``str8`` = u8 length + ASCII)::

    statement := "SMA" | u8 version = 1 | str8 node_id | 32 bytes parent CURVE key
                 | u64 sequence | u64 timestamp (Unix milliseconds)
    signed    := statement || Ed25519(node key, b"securemesh/attach/v1\\x00" || statement)

At most :data:`MAX_ATTACHMENT_SIZE` bytes; the decoder consumes every byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from securemesh.crypto.certs import validate_node_id
from securemesh.crypto.codec import U64 as _U64
from securemesh.crypto.codec import ByteReader
from securemesh.crypto.codec import str8 as _str8
from securemesh.crypto.signing import SIGNATURE_SIZE, Signer, verify_signature
from securemesh.errors import AuthenticationError, DecodeError, LocalError

__all__ = [
    "ATTACH_DOMAIN",
    "MAX_ATTACHMENT_SIZE",
    "Attachment",
    "sign_attachment",
    "verify_attachment",
]

ATTACH_DOMAIN: Final = b"securemesh/attach/v1\x00"
_MAGIC: Final = b"SMA"
_VERSION: Final = 1
_KEY: Final = 32
_MAX_U64: Final = (1 << 64) - 1
#: magic, version, str8 id (<= 64), key, two u64, signature
MAX_ATTACHMENT_SIZE: Final = 3 + 1 + 1 + 64 + _KEY + 8 + 8 + SIGNATURE_SIZE


class _Reader(ByteReader):
    __slots__ = ()
    error: ClassVar[type[Exception]] = DecodeError
    truncated_message: ClassVar[str] = "attachment statement truncated"
    trailing_message: ClassVar[str] = "trailing bytes in attachment statement"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A verified attachment statement (what :func:`verify_attachment` returns)."""

    node_id: str
    parent_key: bytes
    sequence: int
    timestamp_ms: int

    def to_bytes(self) -> bytes:
        """The canonical statement bytes (without the signature)."""
        return b"".join(
            [
                _MAGIC,
                bytes([_VERSION]),
                _str8(self.node_id),
                self.parent_key,
                _U64.pack(self.sequence),
                _U64.pack(self.timestamp_ms),
            ]
        )

    @classmethod
    def parse(cls, blob: bytes) -> tuple[Attachment, bytes]:
        """Split ``statement || signature`` (size first) **without verifying** the signature."""
        if not isinstance(blob, bytes) or len(blob) > MAX_ATTACHMENT_SIZE:
            raise DecodeError("attachment statement too large")
        if len(blob) <= SIGNATURE_SIZE:
            raise DecodeError("attachment statement truncated")
        body, signature = blob[:-SIGNATURE_SIZE], blob[-SIGNATURE_SIZE:]
        reader = _Reader(body)
        if reader.take(len(_MAGIC)) != _MAGIC or reader.u8() != _VERSION:
            raise DecodeError("not an attachment statement")
        node_id = reader.str8()
        parent_key = reader.take(_KEY)
        sequence, timestamp_ms = reader.u64(), reader.u64()
        reader.end()
        try:
            validate_node_id(node_id)
        except LocalError as exc:
            raise DecodeError(str(exc)) from exc
        return cls(node_id, parent_key, sequence, timestamp_ms), signature


def sign_attachment(
    signer: Signer, node_id: str, parent_key: bytes, *, sequence: int, timestamp_ms: int
) -> bytes:
    """``statement || signature`` for ``node_id`` attached below the CURVE key ``parent_key``."""
    validate_node_id(node_id)
    if type(parent_key) is not bytes or len(parent_key) != _KEY:
        raise LocalError("a parent CURVE key is 32 bytes")
    for value in (sequence, timestamp_ms):
        if type(value) is not int or not 0 <= value <= _MAX_U64:
            raise LocalError("sequence and timestamp are u64 integers")
    statement = Attachment(node_id, parent_key, sequence, timestamp_ms).to_bytes()
    return statement + signer.sign(ATTACH_DOMAIN + statement)


def verify_attachment(blob: bytes, verify_key: bytes, *, node_id: str) -> Attachment:
    """Return the statement if it is ``node_id``'s and its signature verifies with
    ``verify_key`` (the verified certificate's key); DecodeError / AuthenticationError else."""
    statement, signature = Attachment.parse(blob)
    if statement.node_id != node_id:
        raise AuthenticationError("attachment statement names another node")
    verify_signature(verify_key, ATTACH_DOMAIN + statement.to_bytes(), signature)
    return statement
