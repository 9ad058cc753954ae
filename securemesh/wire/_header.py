"""The envelope header: a compact, fixed-layout, versioned binary record.

Byte layout (version 1)
-----------------------
All integers are unsigned and big-endian (network order). Offsets are in bytes.

======  =====  ================  ====================================================
offset  size   field             rule
======  =====  ================  ====================================================
0       2      magic             ``b"SM"`` (0x53 0x4D)
2       1      version           ``0x01``; any other value is rejected
3       1      auth_mode         ``0x01`` SIGNED (Ed25519), ``0x02`` MAC (session key)
4       2      flags             bit 0 REQUEST, bit 1 REPLY; all other bits MUST be 0;
                                 REQUEST and REPLY are mutually exclusive and each
                                 needs a non-zero correlation id
6       2      raw_frame_count   number of raw frames between body and auth frame
8       8      sequence          sender's monotonic message counter (0 … 2**64-1)
16      8      timestamp_ms      sender's clock, milliseconds since the Unix epoch
24      16     correlation_id    request/reply correlation, all-zero when unused
40      16     key_id            MAC mode: session id (MUST NOT be all-zero);
                                 SIGNED mode: MUST be all-zero
56      1      type_len   (T)    1 … 64
57      1      sender_len (S)    1 … 64
58      1      recipient_len (R) 0 … 64 (0 = broadcast / not addressed)
59      T      msg_type          ASCII, each byte in ``[a-z0-9._-]``
59+T    S      sender            ASCII node id, each byte in ``[A-Za-z0-9._-]``
59+T+S  R      recipient         ASCII node id, same charset as sender
======  =====  ================  ====================================================

The header is exactly ``59 + T + S + R`` bytes (59 … 251): a decoder rejects a
header that is shorter, longer (no trailing bytes), has a wrong magic or
version, an unknown auth mode, reserved flag bits set, a length outside its
range, or a byte outside its field's charset. There is no padding and no
optional field, so each valid header has exactly one encoding.

Nothing in the header changes from hop to hop: a signed envelope is forwarded
byte for byte and verifies at every hop and at the destination.
"""

from __future__ import annotations

import enum
import re
import struct
from typing import NamedTuple

from securemesh.errors import DecodeError, EncodeError

__all__ = ["ID_SIZE", "MAGIC", "VERSION", "AuthMode", "Flags", "Header", "ZERO_ID"]

MAGIC = b"SM"
VERSION = 1
ID_SIZE = 16
ZERO_ID = bytes(ID_SIZE)
MAX_NAME = 64
U64_MAX = 2**64 - 1

_FIXED = struct.Struct(">2sBBHHQQ16s16sBBB")
FIXED_SIZE = _FIXED.size  # 59, as in the layout table (a test locks it)

_MSG_TYPE_RE = re.compile(rb"[a-z0-9._-]{1,64}")
_NODE_ID_RE = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class AuthMode(enum.IntEnum):
    """How the auth frame authenticates the transcript."""

    SIGNED = 1  #: Ed25519 signature by the sender's identity key (RFC 8032)
    MAC = 2  #: keyed BLAKE2b-256 under a 32-byte session key (RFC 7693)


class Flags(enum.IntFlag):
    """Header flags. Undefined bits are reserved and rejected."""

    NONE = 0
    REQUEST = 0x0001  #: the sender expects a REPLY with the same correlation id
    REPLY = 0x0002  #: answers the REQUEST with the same correlation id


_KNOWN_FLAGS = int(Flags.REQUEST | Flags.REPLY)
_new_header = tuple.__new__  # Header's fields in order, without its Python __new__
_MODES = {int(m): m for m in AuthMode}
_FLAG_VALUES = {0: Flags.NONE, 1: Flags.REQUEST, 2: Flags.REPLY}  # the only legal values


class Header(NamedTuple):
    """The parsed header fields. A plain record: validation happens in the codec.

    Immutable. A named tuple rather than a frozen dataclass: the receiver
    builds one per message, and a frozen dataclass's ``__init__`` (one
    ``object.__setattr__`` per field) costs four times as much.
    """

    auth_mode: AuthMode
    msg_type: str
    sender: str
    recipient: str
    sequence: int
    timestamp_ms: int
    correlation_id: bytes
    key_id: bytes
    raw_frame_count: int
    flags: Flags

    @property
    def is_broadcast(self) -> bool:
        """True when the envelope names no recipient."""
        return not self.recipient


def _problem(h: Header) -> str | None:  # noqa: PLR0911 - one return per rule, like the spec
    """Return why ``h`` is not a valid v1 header, or None (shared by both directions)."""
    mode: object = h.auth_mode  # a Header is a plain record: check types too
    if not isinstance(mode, AuthMode):
        return "unknown auth mode"
    if not (isinstance(h.sequence, int) and 0 <= h.sequence <= U64_MAX):
        return "sequence out of range"
    if not (isinstance(h.timestamp_ms, int) and 0 <= h.timestamp_ms <= U64_MAX):
        return "timestamp out of range"
    if not (isinstance(h.raw_frame_count, int) and 0 <= h.raw_frame_count <= 0xFFFF):
        return "raw frame count out of range"
    if not (isinstance(h.correlation_id, bytes) and len(h.correlation_id) == ID_SIZE):
        return "correlation id must be 16 bytes"
    if not (isinstance(h.key_id, bytes) and len(h.key_id) == ID_SIZE):
        return "key id must be 16 bytes"
    if h.auth_mode is AuthMode.SIGNED and h.key_id != ZERO_ID:
        return "key id must be zero in SIGNED mode"
    if h.auth_mode is AuthMode.MAC and h.key_id == ZERO_ID:
        return "key id (session id) must not be zero in MAC mode"
    flags = int(h.flags)
    if flags & ~_KNOWN_FLAGS:
        return "reserved flag bits set"
    if flags == _KNOWN_FLAGS:
        return "REQUEST and REPLY are mutually exclusive"
    if flags and h.correlation_id == ZERO_ID:
        return "REQUEST/REPLY need a correlation id"
    return None


_FIXED_HEAD = struct.Struct(">2sBBHHQQ16s16s")  # the fixed part up to the three lengths
_MAX_CACHED = 4096  # bounded caches of validated names (cleared when full)
# (msg_type, sender, recipient) -> the header's tail: the three lengths + the names
_ENCODED_NAMES: dict[tuple[object, object, object], bytes] = {}
# the header's tail as received -> (msg_type, sender, recipient), each already validated
_DECODED_NAMES: dict[bytes, tuple[str, str, str]] = {}


def _ascii(value: object) -> bytes | None:
    if not isinstance(value, str) or not value.isascii():
        return None
    return value.encode("ascii")


def _names_tail(msg_type: object, sender: object, recipient: object) -> bytes:
    """The validated variable part of a header (lengths + names), cached per triple."""
    key = (msg_type, sender, recipient)
    plain = type(msg_type) is type(sender) is type(recipient) is str
    tail = _ENCODED_NAMES.get(key) if plain else None  # a str subclass may redefine ==
    if tail is not None:
        return tail
    mt = _ascii(msg_type)
    sd = _ascii(sender)
    rc = _ascii(recipient)
    if mt is None or _MSG_TYPE_RE.fullmatch(mt) is None:
        raise EncodeError("msg_type must be 1-64 characters of [a-z0-9._-]")
    if sd is None or _NODE_ID_RE.fullmatch(sd) is None:
        raise EncodeError("sender must be 1-64 characters of [A-Za-z0-9._-]")
    if rc is None or (rc and _NODE_ID_RE.fullmatch(rc) is None):
        raise EncodeError("recipient must be empty or 1-64 characters of [A-Za-z0-9._-]")
    tail = bytes((len(mt), len(sd), len(rc))) + mt + sd + rc
    if not plain:
        return tail
    if len(_ENCODED_NAMES) >= _MAX_CACHED:
        _ENCODED_NAMES.clear()
    _ENCODED_NAMES[key] = tail
    return tail


def encode_header(h: Header) -> bytes:
    """Serialise ``h``; raise :class:`EncodeError` if any field is invalid."""
    problem = _problem(h)
    if problem is not None:
        raise EncodeError(f"invalid envelope header: {problem}")
    return _FIXED_HEAD.pack(
        MAGIC,
        VERSION,
        int(h.auth_mode),
        int(h.flags),
        h.raw_frame_count,
        h.sequence,
        h.timestamp_ms,
        h.correlation_id,
        h.key_id,
    ) + _names_tail(h.msg_type, h.sender, h.recipient)


def encode_header_fields(  # noqa: PLR0917 - the header's fields, no Header built
    auth_mode: AuthMode,
    msg_type: str,
    sender: str,
    recipient: str,
    sequence: int,
    timestamp_ms: int,
    correlation_id: bytes,
    key_id: bytes,
    raw_frame_count: int,
    flags: Flags,
) -> bytes:
    """:func:`encode_header` of the same fields, for the encoder's hot path.

    The same rules as :func:`_problem`, checked on the values directly (no
    :class:`Header` is built); the names' encoding is cached per triple.
    """
    if (
        type(sequence) is not int
        or type(timestamp_ms) is not int
        or type(raw_frame_count) is not int
        or type(correlation_id) is not bytes
        or type(key_id) is not bytes
        or not isinstance(auth_mode, AuthMode)
        or not isinstance(flags, int)
    ):
        # unusual types (bool, subclasses, wrong kinds): the general path decides
        return encode_header(
            Header(
                auth_mode=auth_mode,
                msg_type=msg_type,
                sender=sender,
                recipient=recipient,
                sequence=sequence,
                timestamp_ms=timestamp_ms,
                correlation_id=correlation_id,
                key_id=key_id,
                raw_frame_count=raw_frame_count,
                flags=flags,
            )
        )
    problem = None
    flag_bits = int(flags)
    if not 0 <= sequence <= U64_MAX:
        problem = "sequence out of range"
    elif not 0 <= timestamp_ms <= U64_MAX:
        problem = "timestamp out of range"
    elif not 0 <= raw_frame_count <= 0xFFFF:
        problem = "raw frame count out of range"
    elif len(correlation_id) != ID_SIZE:
        problem = "correlation id must be 16 bytes"
    elif len(key_id) != ID_SIZE:
        problem = "key id must be 16 bytes"
    elif (key_id == ZERO_ID) is not (auth_mode is AuthMode.SIGNED):
        problem = (
            "key id must be zero in SIGNED mode"
            if auth_mode is AuthMode.SIGNED
            else "key id (session id) must not be zero in MAC mode"
        )
    elif flag_bits & ~_KNOWN_FLAGS:
        problem = "reserved flag bits set"
    elif flag_bits == _KNOWN_FLAGS:
        problem = "REQUEST and REPLY are mutually exclusive"
    elif flag_bits and correlation_id == ZERO_ID:
        problem = "REQUEST/REPLY need a correlation id"
    if problem is not None:
        raise EncodeError(f"invalid envelope header: {problem}")
    return _FIXED_HEAD.pack(
        MAGIC,
        VERSION,
        int(auth_mode),
        flag_bits,
        raw_frame_count,
        sequence,
        timestamp_ms,
        correlation_id,
        key_id,
    ) + _names_tail(msg_type, sender, recipient)


def _decode_names(tail: bytes, type_len: int, sender_len: int) -> tuple[str, str, str]:
    """Validate the names of a header tail (3 length bytes + names); cached per tail."""
    names = _DECODED_NAMES.get(tail)
    if names is not None:
        return names
    msg_type = tail[3 : 3 + type_len]
    sender = tail[3 + type_len : 3 + type_len + sender_len]
    recipient = tail[3 + type_len + sender_len :]
    if _MSG_TYPE_RE.fullmatch(msg_type) is None:
        raise DecodeError("bad msg_type")
    if _NODE_ID_RE.fullmatch(sender) is None:
        raise DecodeError("bad sender")
    if recipient and _NODE_ID_RE.fullmatch(recipient) is None:
        raise DecodeError("bad recipient")
    names = (msg_type.decode("ascii"), sender.decode("ascii"), recipient.decode("ascii"))
    if len(_DECODED_NAMES) >= _MAX_CACHED:
        _DECODED_NAMES.clear()
    _DECODED_NAMES[tail] = names
    return names


def parse_header(data: memoryview | bytes) -> Header:
    """Parse one header frame strictly; raise :class:`DecodeError` on any deviation."""
    size = len(data) if type(data) is bytes else data.nbytes  # type: ignore[union-attr]
    if size < FIXED_SIZE:
        raise DecodeError("header too short")
    (
        magic,
        version,
        mode,
        flags,
        raw_count,
        sequence,
        timestamp_ms,
        correlation_id,
        key_id,
        type_len,
        sender_len,
        recipient_len,
    ) = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError("bad magic")
    if version != VERSION:
        raise DecodeError("unsupported envelope version")
    auth_mode = _MODES.get(mode)
    if auth_mode is None:
        raise DecodeError("unknown auth mode")
    flag_value = _FLAG_VALUES.get(flags)
    if flag_value is None:
        raise DecodeError("reserved flag bits set, or REQUEST with REPLY")
    if flags and correlation_id == ZERO_ID:
        raise DecodeError("REQUEST/REPLY need a correlation id")
    if (key_id == ZERO_ID) is not (auth_mode is AuthMode.SIGNED):
        raise DecodeError("key id must be zero exactly in SIGNED mode")
    if not (
        1 <= type_len <= MAX_NAME and 1 <= sender_len <= MAX_NAME and recipient_len <= MAX_NAME
    ):
        raise DecodeError("bad name length")
    if size != FIXED_SIZE + type_len + sender_len + recipient_len:
        raise DecodeError("header length does not match its fields")
    msg_type, sender, recipient = _decode_names(bytes(data[FIXED_SIZE - 3 :]), type_len, sender_len)
    # Every rule of _problem() was checked above, on the raw values (hot path).
    return _new_header(
        Header,
        (
            auth_mode,
            msg_type,
            sender,
            recipient,
            sequence,
            timestamp_ms,
            correlation_id,
            key_id,
            raw_count,
            flag_value,
        ),
    )
