"""A small, strict binary codec for the secure-aggregation messages.

Every field is length-prefixed and bounded; a :class:`Reader` raises
:class:`~securemesh.errors.DecodeError` (or :class:`SizeLimitExceeded`) on
any truncation, trailing byte, oversized field or invalid identifier, before
the state machines see anything. Integers are big-endian. Nothing is pickled
or evaluated.
"""

from __future__ import annotations

import re
import struct

from securemesh.errors import DecodeError, EncodeError, SizeLimitExceeded

__all__ = ["MAX_ID_SIZE", "Reader", "Writer", "check_client_id"]

MAX_ID_SIZE = 128
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def check_client_id(value: str) -> str:
    """``value`` if it is a valid client identifier (a node id), else DecodeError."""
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise DecodeError("invalid client id")
    return value


class Writer:
    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(_U8.pack(value))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(_U16.pack(value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(_U32.pack(value))
        return self

    def fixed(self, value: bytes, size: int) -> Writer:
        if len(value) != size:
            raise EncodeError(f"field must be exactly {size} bytes")
        self._parts.append(bytes(value))
        return self

    def blob(self, value: bytes) -> Writer:
        self._parts.append(_U32.pack(len(value)))
        self._parts.append(bytes(value))
        return self

    def text(self, value: str) -> Writer:
        raw = value.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise EncodeError("text field too long")
        self._parts.append(_U16.pack(len(raw)))
        self._parts.append(raw)
        return self

    def ident(self, value: str) -> Writer:
        try:
            check_client_id(value)
        except DecodeError as exc:
            raise EncodeError(f"invalid client id {value!r}") from exc
        return self.text(value)

    def finish(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    def _take(self, size: int) -> bytes:
        pos = self._pos
        end = pos + size
        if end > len(self._data):
            raise DecodeError("truncated message")
        self._pos = end
        return self._data[pos:end]

    def _unpack(self, fmt: struct.Struct) -> int:
        pos = self._pos
        if pos + fmt.size > len(self._data):
            raise DecodeError("truncated message")
        self._pos = pos + fmt.size
        return int(fmt.unpack_from(self._data, pos)[0])

    def u8(self) -> int:
        return self._unpack(_U8)

    def u16(self) -> int:
        return self._unpack(_U16)

    def u32(self) -> int:
        return self._unpack(_U32)

    def fixed(self, size: int) -> bytes:
        return self._take(size)

    def blob(self, limit: int) -> bytes:
        size = self.u32()
        if size > limit:
            raise SizeLimitExceeded(f"field of {size} bytes exceeds its limit of {limit}")
        return self._take(size)

    def text(self, limit: int) -> str:
        size = self.u16()
        if size > limit:
            raise SizeLimitExceeded(f"text of {size} bytes exceeds its limit of {limit}")
        try:
            return self._take(size).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("text is not UTF-8") from exc

    def ident(self) -> str:
        value = self.text(MAX_ID_SIZE)
        if _ID.fullmatch(value) is None:
            raise DecodeError("invalid client id")
        return value

    def count(self, limit: int) -> int:
        n = self.u32()
        if n > limit:
            raise SizeLimitExceeded(f"{n} items exceed the limit of {limit}")
        return n

    def end(self) -> None:
        if self._pos != len(self._data):
            raise DecodeError("trailing bytes after message")
