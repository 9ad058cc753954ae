"""Structure checks of TenSEAL's serialized ciphertexts and contexts, before TenSEAL sees them.

Theory of operation
-------------------
A peer's bytes reach native code (TenSEAL's protobuf parser, then SEAL's
``load``) only after this pure-Python pass has checked their shape, so a
garbage, truncated or oversized frame is refused here with a clear
:class:`~securemesh.errors.DecodeError` and never exercises the C++ parsers
on arbitrary input. The formats (TenSEAL 0.3, ``tenseal/proto/*.proto``;
Microsoft SEAL 4.x ``serialization.h``):

* a CKKS vector is the protobuf ``CKKSVectorProto``: field 1 the packed
  sizes (varints), field 2 one SEAL ciphertext per entry (length-delimited),
  field 3 the scale (a double). A chunk of a job is exactly one ciphertext.
* a SEAL object starts with a 16-byte header: magic ``0xA15E``, header size
  ``0x10``, version major (4) and minor, the compression mode (0 none, 1 zlib,
  2 zstd), two reserved zero bytes and the total size (u64, header included),
  all little-endian.
* a context is ``TenSEALContextProto``: field 1 the encryption parameters (a
  SEAL object), field 2 the public key material, field 3 the *secret key*.
  A public context must not have field 3 (:func:`check_public_context`).

Nothing here proves a well-formed ciphertext was encrypted under the job's
key: SEAL's ``load`` then checks its parameters id against the context's
(a ciphertext of other parameters is refused), and docs/he.md says what is
left (a contributor can always encrypt garbage under the right key).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from securemesh.errors import DecodeError, SizeLimitExceeded

__all__ = [
    "SEAL_MAGIC",
    "CiphertextShape",
    "ForeignCiphertext",
    "check_ciphertext",
    "check_public_context",
    "context_has_secret_key",
]

SEAL_MAGIC: Final = 0xA15E
_SEAL_HEADER: Final = struct.Struct("<HBBBBHQ")
_MAX_FIELDS: Final = 64


class ForeignCiphertext(DecodeError):
    """A ciphertext that does not belong to the job's context (other parameters or scale)."""

    reason = "foreign_ciphertext"


@dataclass(frozen=True, slots=True)
class CiphertextShape:
    """What the structure check found: the values the chunk holds, its scale, its size."""

    length: int
    scale: float
    size: int


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 64, 7):
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise DecodeError("varint too long")


def _fields(data: memoryview) -> list[tuple[int, int, memoryview | int | float]]:
    """The top-level protobuf fields of ``data`` (field, wire type, value); strict."""
    out: list[tuple[int, int, memoryview | int | float]] = []
    pos = 0
    while pos < len(data):
        if len(out) >= _MAX_FIELDS:
            raise DecodeError("too many protobuf fields")
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise DecodeError("protobuf field 0")
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((field, wire, value))
        elif wire == 1:
            if pos + 8 > len(data):
                raise DecodeError("truncated double")
            out.append((field, wire, struct.unpack_from("<d", data, pos)[0]))
            pos += 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise DecodeError("truncated length-delimited field")
            out.append((field, wire, data[pos : pos + size]))
            pos += size
        else:
            raise DecodeError(f"unexpected protobuf wire type {wire}")
    return out


def _check_seal_object(blob: memoryview, what: str) -> None:
    if len(blob) < _SEAL_HEADER.size:
        raise DecodeError(f"{what}: truncated SEAL header")
    magic, header_size, major, _minor, compr, reserved, size = _SEAL_HEADER.unpack_from(blob)
    if magic != SEAL_MAGIC or header_size != _SEAL_HEADER.size:
        raise DecodeError(f"{what}: not a SEAL object")
    if major != 4 or compr not in (0, 1, 2) or reserved != 0:
        raise DecodeError(f"{what}: unsupported SEAL version or compression")
    if size != len(blob):
        raise DecodeError(f"{what}: SEAL size field says {size}, the object has {len(blob)}")


def check_ciphertext(
    frame: bytes | memoryview,
    *,
    slots: int,
    scale: float | None,
    min_size: int,
    max_size: int,
) -> CiphertextShape:
    """Check one chunk frame's structure; return its shape or raise DecodeError.

    It must be one TenSEAL CKKS vector holding exactly one SEAL ciphertext of
    at most ``slots`` values at ``scale`` (a ciphertext at another scale is of
    another context: :class:`ForeignCiphertext`; None: any positive scale), between ``min_size`` and
    ``max_size`` bytes.
    """
    data = memoryview(frame).cast("B")
    if len(data) > max_size:
        raise SizeLimitExceeded(f"ciphertext frame of {len(data)} bytes (at most {max_size})")
    if len(data) < min_size:
        raise DecodeError(f"a ciphertext frame of {len(data)} bytes is truncated (min {min_size})")
    sizes: list[int] = []
    blobs: list[memoryview] = []
    found_scale: float | None = None
    for field, wire, value in _fields(data):
        if field == 1 and wire == 2 and isinstance(value, memoryview):
            pos = 0
            while pos < len(value):
                size, pos = _varint(value, pos)
                sizes.append(size)
        elif field == 2 and wire == 2 and isinstance(value, memoryview):
            blobs.append(value)
        elif field == 3 and wire == 1 and isinstance(value, float):
            found_scale = value
        else:
            raise DecodeError(f"unexpected field {field} in a ciphertext")
    if len(blobs) != 1 or len(sizes) != 1:
        raise DecodeError("a chunk holds exactly one ciphertext")
    if not 1 <= sizes[0] <= slots:
        raise DecodeError(f"a chunk holds 1..{slots} values, not {sizes[0]}")
    if found_scale is None or not found_scale > 0:
        raise DecodeError("the ciphertext has no valid scale")
    if scale is not None and found_scale != scale:
        raise ForeignCiphertext("the ciphertext's scale is not the job's")
    _check_seal_object(blobs[0], "ciphertext")
    return CiphertextShape(length=sizes[0], scale=found_scale, size=len(data))


def context_has_secret_key(blob: bytes | memoryview) -> bool:
    """Whether a serialized TenSEAL context carries a secret key (field 3); structure only."""
    return any(field == 3 for field, _, _ in _fields(memoryview(blob).cast("B")))


def check_public_context(blob: bytes | memoryview, *, max_size: int) -> None:
    """Check a serialized public context's structure; raise DecodeError.

    Exactly the encryption parameters (a SEAL object) and the public keys;
    a context holding a secret key is refused (an aggregator must never hold one).
    """
    data = memoryview(blob).cast("B")
    if len(data) > max_size:
        raise SizeLimitExceeded(f"context of {len(data)} bytes (at most {max_size})")
    fields = _fields(data)
    if any(field == 3 for field, _, _ in fields):
        raise DecodeError("the context holds a secret key: only a public context is accepted")
    kinds = [(field, wire) for field, wire, _ in fields]
    if kinds != [(1, 2), (2, 2)]:
        raise DecodeError("not a TenSEAL public context")
    params = fields[0][2]
    assert isinstance(params, memoryview)
    _check_seal_object(params, "encryption parameters")
