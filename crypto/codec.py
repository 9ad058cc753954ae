"""Length-prefixed big-endian binary fields, shared by our canonical encodings.

Certificates and revocation lists (:mod:`securemesh.crypto.certs`) and join
tokens (:mod:`securemesh.enroll._token`) are written as a fixed sequence of
fields: ``u8``/``u32``/``u64`` in network byte order (``struct`` ``>B``, ``>I``,
``>Q``), raw byte strings of a known length, and ``str8`` — one length byte
followed by that many ASCII bytes.

Theory of operation: the writer side is plain functions (:func:`str8` and the
``U32``/``U64`` :class:`struct.Struct` objects); the reader side is
:class:`ByteReader`, a bounds-checked cursor. Every read either returns
exactly the bytes asked for or raises; :meth:`ByteReader.end` insists that
nothing is left over, so each format has exactly one encoding. A format names
its own exception class and messages by subclassing :class:`ByteReader` and
overriding the class variables (certificates raise ``CertificateMalformed``,
join tokens ``DecodeError``), so the shared cursor never changes what a caller
sees.

Public so that the other canonical encodings (join tokens in :mod:`securemesh.enroll`,
attachment statements in :mod:`securemesh.node`) share it without reaching into a
private module; the layer contracts in ``pyproject.toml`` forbid that.
"""

from __future__ import annotations

import struct
from typing import ClassVar

from securemesh.errors import DecodeError, EncodeError

__all__ = ["U32", "U64", "ByteReader", "str8"]

U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")


def str8(value: str) -> bytes:
    """One length byte, then ``value`` as ASCII; EncodeError if longer than 255 bytes."""
    raw = value.encode("ascii")
    if len(raw) > 255:
        raise EncodeError("string field longer than 255 bytes")
    return bytes([len(raw)]) + raw


class ByteReader:
    """Bounds-checked cursor over ``data``; every failure raises :attr:`error`.

    Subclasses set :attr:`error` and the three messages to keep their format's
    own exception and wording.
    """

    error: ClassVar[type[Exception]] = DecodeError
    truncated_message: ClassVar[str] = "truncated"
    not_ascii_message: ClassVar[str] = "non-ASCII text"
    trailing_message: ClassVar[str] = "trailing bytes"

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise self.error(self.truncated_message)
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        value: int = U32.unpack(self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = U64.unpack(self.take(8))[0]
        return value

    def str8(self) -> str:
        raw = self.take(self.u8())
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise self.error(self.not_ascii_message) from exc

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def end(self) -> None:
        if self._pos != len(self._data):
            raise self.error(self.trailing_message)
