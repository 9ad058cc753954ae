"""Z85, the ZeroMQ base-85 encoding (ZeroMQ RFC 32/Z85, https://rfc.zeromq.org/spec/32/).

CurveZMQ tools and configuration files exchange 32-byte Curve25519 keys as
40-character Z85 strings. The encoding is small enough to own here, which
keeps :mod:`securemesh.crypto` free of a pyzmq import.

Theory of operation: the input is read as big-endian 32-bit words; each word
becomes five base-85 digits, most significant first, drawn from the alphabet
below. RFC 32 only defines inputs whose length is a multiple of 4 (and strings
whose length is a multiple of 5); anything else is refused, as is any
character outside the alphabet or any 5-digit group worth 2**32 or more.
"""

from __future__ import annotations

from securemesh.errors import DecodeError, LocalError

__all__ = ["z85_decode", "z85_encode"]

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
_MAX_DECODE_LEN = 1 << 16


def z85_encode(data: bytes) -> str:
    """Encode ``data`` (length a multiple of 4) as a Z85 string."""
    if len(data) % 4:
        raise LocalError(f"Z85 input length must be a multiple of 4, got {len(data)}")
    out: list[str] = []
    for i in range(0, len(data), 4):
        value = int.from_bytes(data[i : i + 4], "big")
        digits = []
        for _ in range(5):
            value, digit = divmod(value, 85)
            digits.append(_ALPHABET[digit])
        out.extend(reversed(digits))
    return "".join(out)


def z85_decode(text: str) -> bytes:
    """Decode a Z85 string (length a multiple of 5); raise DecodeError if it is not valid Z85."""
    if len(text) > _MAX_DECODE_LEN:
        raise DecodeError("Z85 string too long")
    if len(text) % 5:
        raise DecodeError(f"Z85 string length must be a multiple of 5, got {len(text)}")
    out = bytearray()
    for i in range(0, len(text), 5):
        value = 0
        for char in text[i : i + 5]:
            digit = _DECODE.get(char)
            if digit is None:
                raise DecodeError("character outside the Z85 alphabet")
            value = value * 85 + digit
        if value >= 1 << 32:
            raise DecodeError("Z85 group out of range")
        out += value.to_bytes(4, "big")
    return bytes(out)
