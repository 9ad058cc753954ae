"""Envelopes: multipart frames authenticated by an Ed25519 signature or a session MAC.

Frames
------
An envelope is a list of ZeroMQ message parts::

    [header, body, raw_1, ..., raw_n, auth]

``header``
    the binary header of :mod:`securemesh.wire._header` (59 … 251 bytes).
``body``
    UTF-8 JSON of a pydantic model (may be empty), at most ``Limits.max_body``.
    Receivers parse it with ``Model.model_validate_json(body, strict=True)`` and
    refuse duplicate keys and NaN/Infinity (:mod:`securemesh.wire._json`).
``raw_1 … raw_n``
    opaque bulk data (shards, ciphertexts, array buffers); ``n`` is the header's
    ``raw_frame_count``. Each at most ``Limits.max_raw_frame``.
``auth``
    64-byte Ed25519 signature (SIGNED) or 32-byte MAC (MAC).

Transcript
----------
The auth frame authenticates this byte string (``||`` is concatenation,
``u16``/``u64`` are big-endian unsigned integers, ``H`` is unkeyed
BLAKE2b with a 32-byte digest, RFC 7693)::

    transcript = b"securemesh/envelope/v1"            (22 bytes, domain separation)
              || u16(len(header)) || header
              || u64(len(body))   || H(body)
              || u64(len(raw_1))  || H(raw_1)
              || ...
              || u64(len(raw_n))  || H(raw_n)

Each frame is hashed separately and length-prefixed, so frame boundaries are
bound: moving bytes from one frame to the next, dropping a frame or adding one
changes the transcript (and the header fixes ``n``). Hashing each frame lets a
receiver hash a large raw frame in place (``hashlib`` reads a memoryview
without copying) and lets Ed25519 sign a short transcript.

``auth`` is then

* SIGNED: ``Ed25519-Sign(sender identity key, transcript)`` (RFC 8032), 64 bytes.
  The transcript holds only fields the origin chose, none that a hop changes,
  so a signed envelope is forwarded unchanged (``Envelope.frames``) and
  verifies again at every hop and at its destination, by anyone holding the
  sender's certificate.
* MAC: ``BLAKE2b(key=session_key, digest_size=32, data=mac_input)`` — BLAKE2b
  in its keyed mode is a PRF/MAC (RFC 7693 §2.9 and §3.3), 32 bytes, key 32
  bytes — over the frames themselves in one pass, not over their hashes::

      mac_input = b"securemesh/envelope-mac/v1"      (26 bytes, domain separation)
               || u16(len(header)) || header
               || u64(len(body))   || body
               || u64(len(raw_1))  || raw_1 || ... || u64(len(raw_n)) || raw_n

  (the same length-prefixed layout as the transcript, so frame boundaries are
  bound the same way; hashing each frame first would only add a pass, as
  nothing needs the short form). The session id travels in the header's
  ``key_id``; the receiver compares tags with :func:`hmac.compare_digest`. A
  MAC proves the message came from one of the two session ends; it is not
  forwardable evidence.

Packed form
-----------
For storage (outboxes, audit records) and carriers without multipart
messages, :func:`pack_frames` joins the frames into one byte string::

    b"SMPK" || u8(1) || u16(frame_count) || (u32(len(frame)) || frame) * frame_count

and :func:`decode_packed` reverses it strictly (no trailing bytes) before
running :func:`decode`.

Receiving, in order (ARCHITECTURE.md §3)
----------------------------------------
1. :func:`decode` — frame count and every frame size against :class:`Limits`
   (lengths only: no byte of content is read, nothing is hashed), then the
   header is parsed strictly. The result is an :class:`UnverifiedEnvelope`:
   its header fields can be read for routing and to find the sender's
   certificate or session, but it offers no body and no raw frames.
2. :meth:`UnverifiedEnvelope.verify_signature` or
   :meth:`UnverifiedEnvelope.verify_mac` — returns the verified, immutable
   :class:`Envelope` or raises :class:`~securemesh.errors.AuthenticationError`.
   Only verification can construct an :class:`Envelope`.
3. Replay (:class:`securemesh.wire.ReplayGuard`), authorization, dispatch.

What verification does *not* decide (the caller's duties)
---------------------------------------------------------
* SIGNED: the verify key must come from the certificate of ``sender`` (looked
  up by that name, checked valid and unrevoked); then the signature binds the
  sender name too.
* MAC: the MAC proves only that one end of the session named by ``key_id``
  made the message. The caller must check that ``sender`` is that session's
  peer (this also stops a message being reflected back to its origin), and a
  session should use one key per direction.
* Both: ``recipient`` must be this node, or empty for a broadcast, unless the
  node is forwarding; otherwise a message meant for one node could be
  delivered to another.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, TypeVar, cast

from securemesh.crypto.signing import SIGNATURE_SIZE, Signer, verify_signature
from securemesh.errors import (
    AuthenticationError,
    DecodeError,
    EncodeError,
    LocalError,
    SizeLimitExceeded,
)
from securemesh.wire._header import (
    ID_SIZE,
    ZERO_ID,
    AuthMode,
    Flags,
    Header,
    encode_header_fields,
    parse_header,
)
from securemesh.wire._json import dump_body, parse_body
from securemesh.wire._limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "MAC_KEY_SIZE",
    "MAC_SIZE",
    "MAC_LABEL",
    "TRANSCRIPT_LABEL",
    "Envelope",
    "Frame",
    "UnverifiedEnvelope",
    "WireFrame",
    "decode",
    "decode_and_verify",
    "decode_packed",
    "encode_mac",
    "encode_signed",
    "pack_frames",
]

#: What callers may hand us as a frame. At run time :func:`decode` takes any
#: C-contiguous buffer, including ``zmq.Frame`` from ``recv_multipart(copy=False)``.
Frame = bytes | bytearray | memoryview
#: What the encoder hands back: pyzmq sends these with ``copy=False``.
WireFrame = bytes | memoryview

TRANSCRIPT_LABEL: Final = b"securemesh/envelope/v1"
MAC_LABEL: Final = b"securemesh/envelope-mac/v1"
MAC_KEY_SIZE: Final = 32
MAC_SIZE: Final = 32
HASH_SIZE: Final = 32
_AUTH_SIZE: Final = {AuthMode.SIGNED: SIGNATURE_SIZE, AuthMode.MAC: MAC_SIZE}
_MAX_AUTH_SIZE: Final = max(_AUTH_SIZE.values())

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_PACK_MAGIC: Final = b"SMPK"
_PACK_VERSION: Final = 1
_PACK_HEAD = struct.Struct(">4sBH")

M = TypeVar("M", bound="BaseModel")

_TOKEN: Final = object()  # only this module can build an Envelope


# ----------------------------------------------------------------------- buffers


def _view(frame: object, error: type[Exception]) -> memoryview:
    """A flat, contiguous byte view of ``frame``, without copying it."""
    try:
        view = memoryview(cast("bytes", frame))
    except TypeError:
        raise error("a frame must be a bytes-like object") from None
    if view.format != "B" or view.ndim != 1:
        try:
            view = view.cast("B")
        except (TypeError, ValueError):
            raise error("a frame must be a C-contiguous buffer") from None
    elif not view.c_contiguous:
        raise error("a frame must be a C-contiguous buffer")
    return view


_blake2b = hashlib.blake2b


def _whole_bytes(view: memoryview) -> bytes:
    """``bytes(view)``, without a copy when the view spans a whole ``bytes`` object."""
    obj = view.obj
    if type(obj) is bytes and len(obj) == view.nbytes:
        return obj
    return bytes(view)


def _digest(data: memoryview | bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_SIZE).digest()


def _transcript(
    header: memoryview | bytes, body: memoryview | bytes, raws: Sequence[Frame]
) -> bytes:
    if not raws:  # the common case: one join, one body hash
        return b"".join(
            (
                TRANSCRIPT_LABEL,
                _U16.pack(len(header)),
                header,
                _U64.pack(len(body)),
                _blake2b(body, digest_size=HASH_SIZE).digest(),
            )
        )
    parts: list[bytes | memoryview] = [
        TRANSCRIPT_LABEL,
        _U16.pack(len(header)),
        header,
        _U64.pack(len(body)),
        _digest(body),
    ]
    for raw in raws:
        view = raw if isinstance(raw, memoryview) else memoryview(raw)
        parts.append(_U64.pack(view.nbytes))
        parts.append(_digest(view))
    return b"".join(parts)


def _mac(
    key: bytes, header: memoryview | bytes, body: memoryview | bytes, raws: Sequence[Frame]
) -> bytes:
    """The MAC-mode tag: keyed BLAKE2b over the MAC input, in one pass."""
    if not raws:  # the common case: one join, one hash
        return _blake2b(
            b"".join((MAC_LABEL, _U16.pack(len(header)), header, _U64.pack(len(body)), body)),
            key=key,
            digest_size=MAC_SIZE,
        ).digest()
    mac = _blake2b(key=key, digest_size=MAC_SIZE)
    mac.update(b"".join((MAC_LABEL, _U16.pack(len(header)), header, _U64.pack(len(body)))))
    mac.update(body)
    for raw in raws:
        view = raw if isinstance(raw, memoryview) else memoryview(raw)
        mac.update(_U64.pack(view.nbytes))
        mac.update(view)  # hashed in place, not copied
    return mac.digest()


# ----------------------------------------------------------------- header access


class _HeaderFields:
    """Read-only access to the header fields, shared by both envelope kinds."""

    # a plain slot, not a property: read on every message's hot path (Python 3.11
    # specializes slot reads, not property calls); __setattr__ keeps it read-only
    __slots__ = ("header",)
    header: Header

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    @property
    def auth_mode(self) -> AuthMode:
        return self.header.auth_mode

    @property
    def msg_type(self) -> str:
        return self.header.msg_type

    @property
    def sender(self) -> str:
        return self.header.sender

    @property
    def recipient(self) -> str:
        """The addressed node id; empty for a broadcast."""
        return self.header.recipient

    @property
    def sequence(self) -> int:
        return self.header.sequence

    @property
    def timestamp_ms(self) -> int:
        return self.header.timestamp_ms

    @property
    def correlation_id(self) -> bytes:
        return self.header.correlation_id

    @property
    def key_id(self) -> bytes:
        """The session id in MAC mode; 16 zero bytes in SIGNED mode."""
        return self.header.key_id

    @property
    def flags(self) -> Flags:
        return self.header.flags

    @property
    def raw_frame_count(self) -> int:
        return self.header.raw_frame_count

    def __repr__(self) -> str:
        h = self.header
        return (
            f"{type(self).__name__}(mode={h.auth_mode.name}, type={h.msg_type!r}, "
            f"sender={h.sender!r}, recipient={h.recipient!r}, seq={h.sequence}, "
            f"raw_frames={h.raw_frame_count})"
        )


# ------------------------------------------------------------------- envelopes


class Envelope(_HeaderFields):
    """A verified envelope. Only :class:`UnverifiedEnvelope` verification makes one.

    Immutable. ``raw_frames`` and ``frames`` are read-only memoryviews over the
    buffers that were decoded (no copy); do not mutate those buffers afterwards.
    """

    __slots__ = ("_body", "_frames")
    _body: bytes
    _frames: tuple[memoryview, ...]

    def __init__(self, header: Header, frames: tuple[memoryview, ...], *, _token: object) -> None:
        if _token is not _TOKEN:
            raise LocalError("an Envelope is only created by verifying an UnverifiedEnvelope")
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "_frames", frames)  # read-only views: decode() made them so
        object.__setattr__(self, "_body", _whole_bytes(frames[1]))

    @property
    def body_bytes(self) -> bytes:
        """The raw JSON body as received."""
        return self._body

    def body(self, model: type[M]) -> M:
        """Parse the body strictly as ``model``; raise :class:`DecodeError` if it does not fit.

        :func:`securemesh.wire._json.parse_body`: ``model.model_validate_json(body,
        strict=True)`` (no type coercion), then duplicate keys and NaN/Infinity
        are refused (protocol.md §3.1). Strict mode still ignores unknown keys;
        message models should also set ``ConfigDict(extra="forbid", frozen=True)``.
        The error's ``public_detail`` names the failing field (no input values).
        """
        return parse_body(model, self._body)

    @property
    def raw_frames(self) -> tuple[memoryview, ...]:
        """The raw (bulk) frames, read-only, zero-copy."""
        return self._frames[2:-1]

    @property
    def auth_tag(self) -> bytes:
        """The signature (SIGNED) or MAC (MAC) frame."""
        return bytes(self._frames[-1])

    @property
    def frames(self) -> tuple[memoryview, ...]:
        """All frames exactly as received, for forwarding a signed envelope unchanged."""
        return self._frames

    def packed(self) -> bytes:
        """The envelope in packed form (see :func:`pack_frames`), e.g. for an outbox."""
        return pack_frames(self._frames)


class UnverifiedEnvelope(_HeaderFields):
    """A well-formed but not yet authenticated envelope, as :func:`decode` returns it.

    Its header fields may be read (to route it, or to look up the sender's
    certificate or the session named by ``key_id``), but the body and raw
    frames are reachable only through :meth:`verify_signature` or
    :meth:`verify_mac`, which return an :class:`Envelope`.
    """

    __slots__ = ("_views",)
    _views: tuple[memoryview, ...]

    def __init__(self, header: Header, views: tuple[memoryview, ...], *, _token: object) -> None:
        if _token is not _TOKEN:
            raise LocalError("an UnverifiedEnvelope is only created by decode()")
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "_views", views)

    def _transcript(self) -> bytes:
        views = self._views
        if len(views) == Limits.MIN_FRAMES:  # no raw frame: the one-join form
            head, body = views[0], views[1]
            return b"".join(
                (
                    TRANSCRIPT_LABEL,
                    _U16.pack(head.nbytes),
                    head,
                    _U64.pack(body.nbytes),
                    _blake2b(body, digest_size=HASH_SIZE).digest(),
                )
            )
        return _transcript(views[0], views[1], views[2:-1])

    def verify_signature(self, verify_key: bytes) -> Envelope:
        """Check the Ed25519 signature with the sender's 32-byte verify key.

        Returns the verified :class:`Envelope`; raises
        :class:`~securemesh.errors.AuthenticationError` if the envelope is not
        in SIGNED mode or the signature does not verify.
        """
        if self.header.auth_mode is not AuthMode.SIGNED:
            raise AuthenticationError("envelope is not signed")
        verify_signature(verify_key, self._transcript(), _whole_bytes(self._views[-1]))
        return Envelope(self.header, self._views, _token=_TOKEN)

    def verify_mac(self, key: bytes) -> Envelope:
        """Check the session MAC with the 32-byte session key named by ``key_id``.

        The caller must also check that ``sender`` is the peer of that session
        (see the module docstring).

        Returns the verified :class:`Envelope`; raises
        :class:`~securemesh.errors.AuthenticationError` if the envelope is not
        in MAC mode or the tag does not match.
        """
        if not isinstance(key, bytes) or len(key) != MAC_KEY_SIZE:
            raise LocalError(f"a session MAC key is {MAC_KEY_SIZE} bytes")
        if self.header.auth_mode is not AuthMode.MAC:
            raise AuthenticationError("envelope is not in MAC mode")
        views = self._views
        expected = _mac(key, views[0], views[1], views[2:-1])
        if not hmac.compare_digest(expected, _whole_bytes(views[-1])):
            raise AuthenticationError("MAC does not verify")
        return Envelope(self.header, self._views, _token=_TOKEN)


# ---------------------------------------------------------------------- decoding


def decode(frames: Sequence[Frame], *, limits: Limits = DEFAULT_LIMITS) -> UnverifiedEnvelope:  # noqa: PLR0912
    """Check sizes, then form; return an :class:`UnverifiedEnvelope`.

    Raises :class:`~securemesh.errors.SizeLimitExceeded` (before reading any
    content) or :class:`~securemesh.errors.DecodeError`. Frames are kept as
    zero-copy views of the buffers passed in.
    """
    if type(frames) is list and len(frames) == Limits.MIN_FRAMES:
        head, body, auth = frames
        if type(head) is bytes and type(body) is bytes and type(auth) is bytes:
            return _decode_plain(head, body, auth, limits)
    if not isinstance(frames, list | tuple):
        raise DecodeError("an envelope is a list of frames")
    count = len(frames)
    if count > limits.max_frames:
        raise SizeLimitExceeded(f"{count} frames, limit {limits.max_frames}")
    if count < Limits.MIN_FRAMES:
        raise DecodeError("an envelope has at least header, body and auth frames")
    # a memoryview of ``bytes`` is always flat, contiguous and read-only: no checks needed
    views = tuple(
        [memoryview(f) if type(f) is bytes else _view(f, DecodeError).toreadonly() for f in frames]
    )
    # 1. sizes, from lengths alone
    if views[0].nbytes > limits.max_header:
        raise SizeLimitExceeded("header frame too large")
    if views[1].nbytes > limits.max_body:
        raise SizeLimitExceeded("body frame too large")
    if views[-1].nbytes > _MAX_AUTH_SIZE:
        raise SizeLimitExceeded("auth frame too large")
    total = views[0].nbytes + views[1].nbytes + views[-1].nbytes
    for raw in views[2:-1]:
        if raw.nbytes > limits.max_raw_frame:
            raise SizeLimitExceeded("raw frame too large")
        total += raw.nbytes
    if total > limits.max_total:
        raise SizeLimitExceeded("envelope too large")
    # 2. form
    first = frames[0]
    header = parse_header(first if type(first) is bytes else views[0])
    if header.raw_frame_count != count - Limits.MIN_FRAMES:
        raise DecodeError("frame count does not match the header")
    if views[-1].nbytes != _AUTH_SIZE[header.auth_mode]:
        raise DecodeError("auth frame has the wrong size for its mode")
    return UnverifiedEnvelope(header, views, _token=_TOKEN)


def _decode_plain(head: bytes, body: bytes, auth: bytes, limits: Limits) -> UnverifiedEnvelope:
    """:func:`decode` for the usual case: three ``bytes`` frames, no raw frame.

    The same checks in the same order, on ``len()`` instead of buffer views.
    """
    if len(head) > limits.max_header:
        raise SizeLimitExceeded("header frame too large")
    if len(body) > limits.max_body:
        raise SizeLimitExceeded("body frame too large")
    if len(auth) > _MAX_AUTH_SIZE:
        raise SizeLimitExceeded("auth frame too large")
    if len(head) + len(body) + len(auth) > limits.max_total:
        raise SizeLimitExceeded("envelope too large")
    header = parse_header(head)
    if header.raw_frame_count:
        raise DecodeError("frame count does not match the header")
    if len(auth) != _AUTH_SIZE[header.auth_mode]:
        raise DecodeError("auth frame has the wrong size for its mode")
    views = (memoryview(head), memoryview(body), memoryview(auth))
    return UnverifiedEnvelope(header, views, _token=_TOKEN)


def decode_packed(data: Frame, *, limits: Limits = DEFAULT_LIMITS) -> UnverifiedEnvelope:
    """Split a packed envelope (see module docstring) and :func:`decode` it."""
    view = _view(data, DecodeError)
    size = view.nbytes
    overhead = _PACK_HEAD.size + _U32.size * limits.max_frames
    if size > limits.max_total + overhead:
        raise SizeLimitExceeded("packed envelope too large")
    if size < _PACK_HEAD.size:
        raise DecodeError("packed envelope too short")
    magic, version, count = _PACK_HEAD.unpack_from(view)
    if magic != _PACK_MAGIC or version != _PACK_VERSION:
        raise DecodeError("not a packed envelope")
    if count > limits.max_frames:
        raise SizeLimitExceeded(f"{count} frames, limit {limits.max_frames}")
    frames: list[Frame] = []
    offset = _PACK_HEAD.size
    for _ in range(count):
        if offset + _U32.size > size:
            raise DecodeError("packed envelope truncated")
        (length,) = _U32.unpack_from(view, offset)
        offset += _U32.size
        if offset + length > size:
            raise DecodeError("packed envelope truncated")
        frames.append(view[offset : offset + length])
        offset += length
    if offset != size:
        raise DecodeError("trailing bytes after packed envelope")
    return decode(frames, limits=limits)


def decode_and_verify(
    frames: Sequence[Frame],
    *,
    limits: Limits = DEFAULT_LIMITS,
    verify_key_for: Callable[[UnverifiedEnvelope], bytes] | None = None,
    mac_key_for: Callable[[UnverifiedEnvelope], bytes] | None = None,
) -> Envelope:
    """Decode and verify in one step, looking the key up from the unverified header.

    ``verify_key_for`` returns the sender's Ed25519 verify key (after checking
    its certificate; it raises e.g. a :class:`~securemesh.errors.CertificateError`
    otherwise); ``mac_key_for`` returns the 32-byte key of the session named by
    ``key_id``. A mode whose resolver is ``None`` is refused with
    :class:`~securemesh.errors.AuthenticationError`. Resolvers are called only
    after the size and form checks have passed.
    """
    envelope = decode(frames, limits=limits)
    if envelope.auth_mode is AuthMode.SIGNED:
        if verify_key_for is None:
            raise AuthenticationError("signed envelopes are not accepted here")
        return envelope.verify_signature(verify_key_for(envelope))
    if mac_key_for is None:
        raise AuthenticationError("MAC envelopes are not accepted here")
    return envelope.verify_mac(mac_key_for(envelope))


# ---------------------------------------------------------------------- encoding


def _body_bytes(body: BaseModel | Frame) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(_view(body, EncodeError))
    from pydantic import BaseModel  # noqa: PLC0415 - lazy, as in Envelope.body

    if isinstance(body, BaseModel):
        return dump_body(body)
    raise EncodeError("body must be a pydantic model or JSON bytes")


def _send_view(frame: Frame) -> WireFrame:
    if isinstance(frame, bytes):
        return frame
    return _view(frame, EncodeError).toreadonly()


def _prepare_plain(  # noqa: PLR0917 - _prepare's fields, positionally (hot path)
    auth_mode: AuthMode,
    key_id: bytes,
    msg_type: str,
    sender: str,
    recipient: str,
    sequence: int,
    timestamp_ms: int,
    body: bytes,
    correlation_id: bytes,
    flags: Flags,
    limits: Limits,
) -> list[WireFrame]:
    """:func:`_prepare` for a ``bytes`` body and no raw frame: the same checks."""
    if len(body) > limits.max_body:
        raise EncodeError(f"body is {len(body)} bytes, limit {limits.max_body}")
    header = encode_header_fields(
        auth_mode,
        msg_type,
        sender,
        recipient,
        sequence,
        timestamp_ms,
        correlation_id,
        key_id,
        0,
        flags,
    )
    total = len(header) + len(body) + _AUTH_SIZE[auth_mode]
    if total > limits.max_total:
        raise EncodeError(f"envelope is {total} bytes, limit {limits.max_total}")
    if len(header) > limits.max_header:
        raise EncodeError(f"header is {len(header)} bytes, limit {limits.max_header}")
    return [header, body]


def _prepare(
    *,
    auth_mode: AuthMode,
    key_id: bytes,
    msg_type: str,
    sender: str,
    recipient: str,
    sequence: int,
    timestamp_ms: int,
    body: BaseModel | Frame,
    frames: Sequence[Frame],
    correlation_id: bytes,
    flags: Flags,
    limits: Limits,
) -> list[WireFrame]:
    """Build ``[header, body, *raws]``, enforcing ``limits`` (the caller adds auth)."""
    if type(body) is bytes and type(frames) is tuple and not frames:
        return _prepare_plain(
            auth_mode,
            key_id,
            msg_type,
            sender,
            recipient,
            sequence,
            timestamp_ms,
            body,
            correlation_id,
            flags,
            limits,
        )
    if isinstance(frames, bytes | bytearray | memoryview | str):
        raise EncodeError("frames must be a sequence of buffers, not one buffer")
    raws = [_send_view(f) for f in frames]
    if len(raws) > limits.max_raw_frames:
        raise EncodeError(f"{len(raws)} raw frames, limit {limits.max_raw_frames}")
    body_bytes = _body_bytes(body)
    if len(body_bytes) > limits.max_body:
        raise EncodeError(f"body is {len(body_bytes)} bytes, limit {limits.max_body}")
    header = encode_header_fields(
        auth_mode,
        msg_type,
        sender,
        recipient,
        sequence,
        timestamp_ms,
        correlation_id,
        key_id,
        len(raws),
        flags,
    )
    total = len(header) + len(body_bytes) + _AUTH_SIZE[auth_mode]
    for raw in raws:
        if len(raw) > limits.max_raw_frame:
            raise EncodeError(f"raw frame is {len(raw)} bytes, limit {limits.max_raw_frame}")
        total += len(raw)
    if total > limits.max_total:
        raise EncodeError(f"envelope is {total} bytes, limit {limits.max_total}")
    if len(header) > limits.max_header:
        raise EncodeError(f"header is {len(header)} bytes, limit {limits.max_header}")
    return [header, body_bytes, *raws]


def encode_signed(
    *,
    msg_type: str,
    sender: str,
    recipient: str,
    sequence: int,
    timestamp_ms: int,
    body: BaseModel | Frame,
    frames: Sequence[Frame] = (),
    signer: Signer,
    correlation_id: bytes = ZERO_ID,
    flags: Flags = Flags.NONE,
    limits: Limits = DEFAULT_LIMITS,
) -> list[WireFrame]:
    """Build a SIGNED envelope: ``[header, body, *frames, signature]``.

    ``body`` is a pydantic model (serialised with ``model_dump_json``, optional
    fields that are None omitted: :func:`securemesh.wire._json.dump_body`) or
    ready JSON bytes. Raw ``frames`` are passed through without copying
    (memoryviews of bytearrays/arrays; keep them unchanged until sent).
    Raises :class:`~securemesh.errors.EncodeError` for invalid fields or when
    the envelope would exceed ``limits`` (which receivers enforce).
    """
    parts = _prepare(
        auth_mode=AuthMode.SIGNED,
        key_id=ZERO_ID,
        msg_type=msg_type,
        sender=sender,
        recipient=recipient,
        sequence=sequence,
        timestamp_ms=timestamp_ms,
        body=body,
        frames=frames,
        correlation_id=correlation_id,
        flags=flags,
        limits=limits,
    )
    signature = signer.sign(_transcript(parts[0], parts[1], parts[2:]))
    if len(signature) != SIGNATURE_SIZE:
        raise EncodeError("signer returned a signature of the wrong size")
    parts.append(bytes(signature))
    return parts


def encode_mac(
    *,
    msg_type: str,
    sender: str,
    recipient: str,
    sequence: int,
    timestamp_ms: int,
    body: BaseModel | Frame,
    frames: Sequence[Frame] = (),
    session_id: bytes,
    key: bytes,
    correlation_id: bytes = ZERO_ID,
    flags: Flags = Flags.NONE,
    limits: Limits = DEFAULT_LIMITS,
) -> list[WireFrame]:
    """Build a MAC envelope under a 32-byte session ``key`` named by ``session_id`` (16 bytes).

    Otherwise as :func:`encode_signed`.
    """
    if not isinstance(key, bytes) or len(key) != MAC_KEY_SIZE:
        raise EncodeError(f"a session MAC key is {MAC_KEY_SIZE} bytes")
    if not isinstance(session_id, bytes) or len(session_id) != ID_SIZE:
        raise EncodeError(f"a session id is {ID_SIZE} bytes")
    parts = _prepare(
        auth_mode=AuthMode.MAC,
        key_id=session_id,
        msg_type=msg_type,
        sender=sender,
        recipient=recipient,
        sequence=sequence,
        timestamp_ms=timestamp_ms,
        body=body,
        frames=frames,
        correlation_id=correlation_id,
        flags=flags,
        limits=limits,
    )
    parts.append(_mac(key, parts[0], parts[1], parts[2:]))
    return parts


def pack_frames(frames: Sequence[Frame]) -> bytes:
    """Join envelope frames into the packed single-buffer form (see module docstring)."""
    if isinstance(frames, bytes | bytearray | memoryview | str):
        raise EncodeError("frames must be a sequence of buffers, not one buffer")
    if len(frames) > 0xFFFF:
        raise EncodeError("too many frames to pack")
    parts: list[bytes | memoryview] = [_PACK_HEAD.pack(_PACK_MAGIC, _PACK_VERSION, len(frames))]
    for frame in frames:
        view = _view(frame, EncodeError)
        if view.nbytes > 0xFFFFFFFF:
            raise EncodeError("frame too large to pack")
        parts.append(_U32.pack(view.nbytes))
        parts.append(view)
    return b"".join(parts)
