"""Signed tree heads: C2SP tlog-checkpoint bodies inside C2SP signed notes (Ed25519).

Theory of operation
-------------------

A *checkpoint* (https://c2sp.org/tlog-checkpoint) is the text::

    <origin>\\n
    <tree size, ASCII decimal, no leading zeros>\\n
    <base64 (RFC 4648 §4, padded) of the RFC 6962 root hash>\\n
    [extension lines, each non-empty]\\n

and it travels as a *signed note* (https://c2sp.org/signed-note): the text, one
blank line, then signature lines ``"— <key name> <base64(key ID || sig)>\\n"``
(em dash U+2014, space). For Ed25519 (signature type 0x01) the signature is
RFC 8032 over the text *including* its final newline, and the 4-byte key ID is
``SHA-256(key name || 0x0A || 0x01 || public key)[:4]``. A verifier key is
shared as Go's ``note.NewVerifier`` string
``<name>+<key ID hex>+<base64(0x01 || public key)>`` (:func:`format_verifier_key`,
:func:`parse_verifier_key`). The byte-exact compatibility with Go's
``golang.org/x/mod/sumdb/note`` is checked against its published test vectors.

Opening a note follows the spec's trust rules: signatures from keys we do not
know (name *and* key ID must both match) are ignored; the first signature from
the known key must verify, or the whole note is rejected
(:class:`~securemesh.errors.AuthenticationError`); a note with no signature
from the known key is rejected as well. Everything is size-limited and parsed
strictly before any signature work (:class:`~securemesh.errors.SizeLimitExceeded`
then :class:`~securemesh.errors.DecodeError`): valid UTF-8, no control
characters other than newline, at most :data:`MAX_SIGNATURES` signature lines,
canonical base64 and decimal.

Time. The checkpoint format carries no timestamp, and extension lines are "NOT
RECOMMENDED, as they are not auditable by log monitors". SecureMesh therefore
signs plain three-line checkpoints by default; the tree-head history table
records when each was made. A log that wants a *signed* time claim (to let
clients detect a frozen log) may set :attr:`Checkpoint.time_ms`, which is
written as the first extension line ``securemesh-time-ms <unix ms>``; other
C2SP verifiers treat it as an opaque extension, and we parse it strictly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field

from securemesh.crypto.signing import (
    SIGNATURE_SIZE,
    VERIFY_KEY_SIZE,
    Signer,
    verify_signature,
)
from securemesh.errors import AuthenticationError, DecodeError, LocalError, SizeLimitExceeded

__all__ = [
    "MAX_CHECKPOINT_SIZE",
    "MAX_SIGNATURES",
    "SIG_TYPE_ED25519",
    "TIME_EXTENSION",
    "Checkpoint",
    "NoteVerifier",
    "format_verifier_key",
    "key_id",
    "note_signers",
    "open_checkpoint",
    "open_note",
    "parse_verifier_key",
    "sign_checkpoint",
    "sign_note",
]

SIG_TYPE_ED25519 = 0x01
"""signed-note signature type identifier for Ed25519."""

MAX_CHECKPOINT_SIZE = 8 * 1024
"""Hard limit on a whole signed checkpoint note, checked before parsing."""

MAX_SIGNATURES = 100
"""At most this many signature lines (Go's sumdb/note limit; the spec demands >= 16)."""

MAX_TREE_SIZE = (1 << 63) - 1
"""Tree sizes are stored in signed 64-bit database columns."""

TIME_EXTENSION = "securemesh-time-ms"
"""Keyword of the optional signed-time extension line."""

_EM_DASH_PREFIX = "\u2014 "
_KEY_ID_SIZE = 4
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_HEX8 = re.compile(r"[0-9a-f]{8}")


# ------------------------------------------------------------------ key names and IDs


def _valid_name(name: str) -> bool:
    """signed-note: non-empty, no Unicode spaces, no '+' (and, for us, no control chars)."""
    return (
        bool(name)
        and "+" not in name
        and not any(ch.isspace() or ord(ch) < 0x20 or ch == "\x7f" for ch in name)
    )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _valid_name(name):
        raise LocalError(f"invalid note key name {name!r}")


def key_id(key_name: str, verify_key: bytes) -> bytes:
    """The 4-byte Ed25519 key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    _check_name(key_name)
    if len(verify_key) != VERIFY_KEY_SIZE:
        raise LocalError(f"an Ed25519 public key is {VERIFY_KEY_SIZE} bytes")
    data = key_name.encode() + b"\n" + bytes([SIG_TYPE_ED25519]) + bytes(verify_key)
    return hashlib.sha256(data).digest()[:_KEY_ID_SIZE]


def _b64decode_strict(text: str) -> bytes:
    """Standard padded base64 that must round-trip exactly (no whitespace, no slack bits)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise DecodeError("invalid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise DecodeError("non-canonical base64")
    return raw


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A note verifier key: a name and an Ed25519 public key (public data)."""

    name: str
    verify_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.verify_key, bytes) or len(self.verify_key) != VERIFY_KEY_SIZE:
            raise LocalError(f"an Ed25519 public key is {VERIFY_KEY_SIZE} bytes")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.verify_key)

    def to_string(self) -> str:
        """``<name>+<key ID hex>+<base64(0x01 || key)>`` as Go's ``note.NewVerifier`` reads."""
        blob = base64.b64encode(bytes([SIG_TYPE_ED25519]) + self.verify_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{blob}"

    @classmethod
    def from_string(cls, text: str) -> NoteVerifier:
        """Parse and check a verifier key string; raises :class:`DecodeError`."""
        if not isinstance(text, str) or len(text) > 1024:
            raise DecodeError("verifier key is not a short string")
        name, sep1, rest = text.partition("+")
        hex_id, sep2, blob = rest.partition("+")
        if not (sep1 and sep2) or not _valid_name(name) or not _HEX8.fullmatch(hex_id):
            raise DecodeError("malformed verifier key")
        raw = _b64decode_strict(blob)
        if len(raw) != 1 + VERIFY_KEY_SIZE or raw[0] != SIG_TYPE_ED25519:
            raise DecodeError("verifier key is not an Ed25519 key")
        verifier = cls(name, raw[1:])
        if verifier.key_id.hex() != hex_id:
            raise DecodeError("verifier key ID does not match the key")
        return verifier


def format_verifier_key(name: str, verify_key: bytes) -> str:
    """Encode ``(name, Ed25519 public key)`` as a Go-compatible verifier key string."""
    return NoteVerifier(name, bytes(verify_key)).to_string()


def parse_verifier_key(text: str) -> tuple[str, bytes]:
    """Decode a verifier key string into ``(name, 32-byte public key)``."""
    v = NoteVerifier.from_string(text)
    return v.name, v.verify_key


# ------------------------------------------------------------------ signed notes


def _check_note_text(text: str) -> None:
    if not text.endswith("\n") or "\n\n" in text:
        raise DecodeError("note text must end in a newline and contain no blank line")
    if any(ord(ch) < 0x20 and ch != "\n" for ch in text):
        raise DecodeError("note text contains control characters")


def sign_note(text: str, *, key_name: str, signer: Signer) -> bytes:
    """Sign ``text`` (which must end in a newline) as a one-signature C2SP note.

    Returns the UTF-8 note ``text || "\\n" || "— <key name> <base64(id || sig)>\\n"``.
    We refuse to sign texts with blank lines, although the spec allows them, so
    that the text/signature split is never ambiguous.
    """
    _check_name(key_name)
    try:
        _check_note_text(text)
    except DecodeError as exc:
        raise LocalError(str(exc)) from exc
    data = text.encode("utf-8")
    sig = signer.sign(data)
    blob = base64.b64encode(key_id(key_name, signer.verify_key) + sig).decode("ascii")
    return data + f"\n{_EM_DASH_PREFIX}{key_name} {blob}\n".encode()


def _split_note(note: bytes, max_size: int) -> tuple[str, list[tuple[str, bytes]]]:
    """Strictly parse a signed note into (text, [(key name, base64-decoded blob)])."""
    if not isinstance(note, bytes):
        raise DecodeError("a note is bytes")
    if len(note) > max_size:
        raise SizeLimitExceeded(f"note is larger than {max_size} bytes")
    try:
        msg = note.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise DecodeError("note is not UTF-8") from exc
    if any(ord(ch) < 0x20 and ch != "\n" for ch in msg):
        raise DecodeError("note contains control characters")
    split = msg.rfind("\n\n")
    if split < 0:
        raise DecodeError("note has no signature block")
    text, sig_block = msg[: split + 1], msg[split + 2 :]
    if not sig_block.endswith("\n"):
        raise DecodeError("signature block must end in a newline")
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise DecodeError(f"more than {MAX_SIGNATURES} signatures")
    sigs: list[tuple[str, bytes]] = []
    for line in lines:
        if not line.startswith(_EM_DASH_PREFIX):
            raise DecodeError("malformed signature line")
        name, sep, blob = line[len(_EM_DASH_PREFIX) :].partition(" ")
        if not sep or not _valid_name(name):
            raise DecodeError("malformed signature line")
        raw = _b64decode_strict(blob)
        if len(raw) <= _KEY_ID_SIZE:
            raise DecodeError("signature too short")
        sigs.append((name, raw))
    return text, sigs


def open_note(
    note: bytes, *, key_name: str, verify_key: bytes, max_size: int = MAX_CHECKPOINT_SIZE
) -> str:
    """Verify a signed note against one known key and return its text.

    Signatures by other keys are ignored (signed-note §Signatures); the first
    signature from ``(key_name, key ID)`` must verify. Raises
    :class:`SizeLimitExceeded` / :class:`DecodeError` for malformed notes and
    :class:`AuthenticationError` when no signature of the key verifies.
    """
    text, sigs = _split_note(note, max_size)
    expected_id = key_id(key_name, verify_key)
    for name, raw in sigs:
        if name != key_name or raw[:_KEY_ID_SIZE] != expected_id:
            continue  # an unknown key (witness cosignature, rotated key): ignore
        if len(raw) != _KEY_ID_SIZE + SIGNATURE_SIZE:
            raise AuthenticationError("signature from the known key has the wrong length")
        verify_signature(verify_key, text.encode("utf-8"), raw[_KEY_ID_SIZE:])
        return text
    raise AuthenticationError(f"no signature by {key_name}+{expected_id.hex()}")


def note_signers(note: bytes, *, max_size: int = MAX_CHECKPOINT_SIZE) -> list[tuple[str, bytes]]:
    """``(key name, 4-byte key ID)`` of each signature line of a note. UNVERIFIED.

    Only for telling a person *which* key signed a note that does not open with
    the key they gave (``audit verify --log-key`` of another log); nothing here
    is checked beyond the note's syntax (:class:`DecodeError`).
    """
    _, sigs = _split_note(note, max_size)
    return [(name, raw[:_KEY_ID_SIZE]) for name, raw in sigs]


# ------------------------------------------------------------------ checkpoints


def _check_extension(line: str) -> None:
    if not isinstance(line, str) or not line or "\n" in line:
        raise LocalError("extension lines are non-empty single lines")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin, tree size, RFC 6962 root hash (and optional extras).

    ``time_ms`` (optional) is the log's signed claim of when it made the
    checkpoint; ``extensions`` are further opaque extension lines.
    """

    origin: str
    size: int
    root_hash: bytes
    time_ms: int | None = None
    extensions: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not _valid_name(self.origin):
            raise LocalError(f"invalid checkpoint origin {self.origin!r}")
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise LocalError("tree size must be an int in [0, 2**63)")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != 32:
            raise LocalError("root hash must be 32 bytes")
        if self.time_ms is not None and (
            type(self.time_ms) is not int or not 0 <= self.time_ms <= MAX_TREE_SIZE
        ):
            raise LocalError("time_ms must be a non-negative int")
        if not isinstance(self.extensions, tuple):
            raise LocalError("extensions must be a tuple of lines")
        for line in self.extensions:
            _check_extension(line)
            if line.startswith(TIME_EXTENSION + " ") or line == TIME_EXTENSION:
                raise LocalError("use time_ms for the time extension")

    def body(self) -> str:
        """The checkpoint note text (tlog-checkpoint §Note text)."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode("ascii")]
        if self.time_ms is not None:
            lines.append(f"{TIME_EXTENSION} {self.time_ms}")
        lines.extend(self.extensions)
        return "".join(line + "\n" for line in lines)


def _parse_decimal(text: str, what: str) -> int:
    if not _DECIMAL.fullmatch(text) or len(text) > 19:
        raise DecodeError(f"{what} is not a canonical decimal")
    value = int(text)
    if value > MAX_TREE_SIZE:
        raise DecodeError(f"{what} is too large")
    return value


def _parse_checkpoint_body_unverified(text: str) -> Checkpoint:
    """Parse checkpoint text. UNVERIFIED: only call on text whose signature checked."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise DecodeError("a checkpoint has at least three lines, each ending in a newline")
    lines = lines[:-1]
    origin, size_text, root_text, *extra = lines
    if not _valid_name(origin):
        raise DecodeError("invalid checkpoint origin")
    size = _parse_decimal(size_text, "tree size")
    root_hash = _b64decode_strict(root_text)
    if len(root_hash) != 32:
        raise DecodeError("root hash must be 32 bytes")
    time_ms: int | None = None
    if extra and extra[0].startswith(TIME_EXTENSION + " "):
        time_ms = _parse_decimal(extra[0][len(TIME_EXTENSION) + 1 :], "time")
        extra = extra[1:]
    for line in extra:
        if not line:
            raise DecodeError("empty extension line")
        if line.startswith(TIME_EXTENSION):
            raise DecodeError("misplaced or malformed time extension")
    return Checkpoint(origin, size, root_hash, time_ms, tuple(extra))


def sign_checkpoint(cp: Checkpoint, *, key_name: str, signer: Signer) -> bytes:
    """Sign a checkpoint as a C2SP signed note; returns the UTF-8 note bytes."""
    note = sign_note(cp.body(), key_name=key_name, signer=signer)
    if len(note) > MAX_CHECKPOINT_SIZE:
        raise LocalError(f"signed checkpoint is larger than {MAX_CHECKPOINT_SIZE} bytes")
    return note


def open_checkpoint(
    note: bytes, *, key_name: str, verify_key: bytes, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint with the log's public key and return it.

    Checks, in order: size limit, note syntax, the log's signature, the
    checkpoint syntax, and (if given) that the checkpoint's origin is
    ``origin``. Raises :class:`SizeLimitExceeded`, :class:`DecodeError` or
    :class:`AuthenticationError` (wrong key, bad signature, other origin).
    """
    text = open_note(note, key_name=key_name, verify_key=verify_key)
    cp = _parse_checkpoint_body_unverified(text)
    if origin is not None and cp.origin != origin:
        raise AuthenticationError(f"checkpoint is for log {cp.origin!r}, not {origin!r}")
    return cp
