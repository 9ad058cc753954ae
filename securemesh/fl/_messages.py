"""Secure-aggregation messages (Bonawitz et al., CCS 2017, Fig. 4; Bell et al., CCS 2020).

One frame per message: ``b"SMFL" || u8 version (1) || u8 kind || fields``,
fields encoded by :mod:`securemesh.fl._codec` with hard limits. Client to
server: :class:`AdvertiseKeys` (round 0), :class:`ShareKeys` (round 1),
:class:`MaskedInput` (round 2), :class:`ConsistencySig` (round 3),
:class:`UnmaskShares` (round 4). Server to client: :class:`RoundKeys`,
:class:`ForwardedShares`, :class:`SurvivorSet`, :class:`SurvivorSigs` and
:class:`Abort`. The bus envelope around a frame is signed by its sender; the
signatures inside (advertised keys, shares, survivor set) are the protocol's
own, so the server can forward them and a client can check them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from securemesh.crypto.shamir import SHARE_SIZE
from securemesh.errors import DecodeError, SizeLimitExceeded
from securemesh.fl._codec import Reader, Writer
from securemesh.fl._config import MAX_COHORT, MAX_LENGTH, ROUND_ID_SIZE

__all__ = [
    "MAX_FRAME",
    "Abort",
    "AdvertiseKeys",
    "ConsistencySig",
    "ForwardedShares",
    "MaskedInput",
    "Message",
    "RoundKeys",
    "ShareKeys",
    "SurvivorSet",
    "SurvivorSigs",
    "UnmaskShare",
    "UnmaskShares",
    "decode",
]

MAGIC = b"SMFL"
VERSION = 1
KEY = 32
SIG = 64
HASH = 32
MAX_CIPHERTEXT = 512
MAX_REASON = 256
MAX_FRAME = 8 * MAX_LENGTH + (1 << 20)
MAX_NEIGHBOURS = MAX_COHORT


def _head(kind: int, round_id: bytes) -> Writer:
    w = Writer()
    w.fixed(MAGIC, 4).u8(VERSION).u8(kind).fixed(round_id, ROUND_ID_SIZE)
    return w


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """Round 0: the client's two fresh X25519 public keys, signed by its identity key."""

    KIND: ClassVar[int] = 1
    round_id: bytes
    client: str
    c_pk: bytes  # encryption of shares
    s_pk: bytes  # pairwise mask agreement
    signature: bytes

    def encode(self) -> bytes:
        w = _head(self.KIND, self.round_id).ident(self.client)
        return w.fixed(self.c_pk, KEY).fixed(self.s_pk, KEY).fixed(self.signature, SIG).finish()

    @classmethod
    def read(cls, r: Reader, round_id: bytes) -> AdvertiseKeys:
        return cls(round_id, r.ident(), r.fixed(KEY), r.fixed(KEY), r.fixed(SIG))

    def _write_body(self, w: Writer) -> None:
        w.ident(self.client).fixed(self.c_pk, KEY).fixed(self.s_pk, KEY).fixed(self.signature, SIG)


@dataclass(frozen=True, slots=True)
class RoundKeys:
    """Server to client: the advertisements of the client's neighbours that arrived."""

    KIND: ClassVar[int] = 2
    round_id: bytes
    keys: tuple[AdvertiseKeys, ...]

    def encode(self) -> bytes:
        w = _head(self.KIND, self.round_id).u32(len(self.keys))
        for adv in self.keys:
            adv._write_body(w)
        return w.finish()

    @classmethod
    def read(cls, r: Reader, round_id: bytes) -> RoundKeys:
        n = r.count(MAX_NEIGHBOURS)
        return cls(round_id, tuple(AdvertiseKeys.read(r, round_id) for _ in range(n)))


@dataclass(frozen=True, slots=True)
class ShareKeys:
    """Round 1: the client's encrypted shares, one ciphertext per holder (by holder id)."""

    KIND: ClassVar[int] = 3
    round_id: bytes
    client: str
    ciphertexts: tuple[tuple[str, bytes], ...]

    def encode(self) -> bytes:
        w = _head(self.KIND, self.round_id).ident(self.client).u32(len(self.ciphertexts))
        for holder, ct in self.ciphertexts:
            w.ident(holder).blob(ct)
        return w.finish()

    @classmethod
    def read(cls, r: Reader, round_id: bytes) -> ShareKeys:
        client = r.ident()
        n = r.count(MAX_NEIGHBOURS)
        return cls(round_id, client, tuple((r.ident(), r.blob(MAX_CIPHERTEXT)) for _ in range(n)))


@dataclass(frozen=True, slots=True)
class ForwardedShares:
    """Server to client: the ciphertexts addressed to it, by sender id."""

    KIND: ClassVar[int] = 4
    round_id: bytes
    ciphertexts: tuple[tuple[str, bytes], ...]

    def encode(self) -> bytes:
        w = _head(self.KIND, self.round_id).u32(len(self.ciphertexts))
        for sender, ct in self.ciphertexts:
            w.ident(sender).blob(ct)
        return w.finish()

    @classmethod
    def read(cls, r: Reader, round_id: bytes) -> ForwardedShares:
        n = r.count(MAX_NEIGHBOURS)
        return cls(round_id, tuple((r.ident(), r.blob(MAX_CIPHERTEXT)) for _ in range(n)))


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """Round 2: y_u as little-endian ring elements, and complaints about bad shares."""

    KIND: ClassVar[int] = 5
    round_id: bytes
    client: str
    vector: bytes
    complaints: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        w = _head(self.KIND, self.round_id).ident(self.client).u32(len(self.complaints))
        for accused, reason in self.complaints:
            w.ident(accused).text(reason[:MAX_REASON])
        return w.blob(self.vector).finish()

    @classmethod
    def read(cls, r: Reader, round_id: bytes) -> MaskedInput:
        client = r.ident()
        n = r.count(MAX_NEIGHBOURS)
        complaints = tuple((r.ident(), r.text(MAX_REASON)) for _ in range(n))
        return cls(round_id, client, r.blob(8 * MAX_LENGTH), complaints)


@dataclass(frozen=True, slots=True)
class SurvivorSet:
    """Server to client (round 3): U3, the clients whose masked inputs are in the sum."""

    KIND: ClassVar[int] = 6
    round_id: bytes
    survivors: tuple[str, ...]

    def encode(self) -> bytes:
        w = _head(self.KIND, self.round_id).u32(len(self.survivors))
        for c in self.survivors:
            w.ident(c)
        return w.finish()

    @classmethod
    def read(cls, r: Reader, round_id: bytes) -> SurvivorSet:
        n = r.count(MAX_COHORT)
        return cls(round_id, tuple(r.ident() for _ in range(n)))


@dataclass(frozen=True, slots=True)
class ConsistencySig:
    """Round 3: the client's identity signature over the survivor set."""

    KIND: ClassVar[int] = 7
    round_id: bytes
    client: str
    signature: bytes

    def encode(self) -> bytes:
        w = _head(self.KIND, self.round_id).ident(self.client)
        return w.fixed(self.signature, SIG).finish()

    @classmethod
    def read(cls, r: Reader, round_id: bytes) -> ConsistencySig:
        return cls(round_id, r.ident(), r.fixed(SIG))


@dataclass(frozen=True, slots=True)
class SurvivorSigs:
    """Server to client: the neighbours' signatures over the same survivor set."""

    KIND: ClassVar[int] = 8
    round_id: bytes
    signatures: tuple[tuple[str, bytes], ...]

    def encode(self) -> bytes:
        w = _head(self.KIND, self.round_id).u32(len(self.signatures))
        for c, sig in self.signatures:
            w.ident(c).fixed(sig, SIG)
        return w.finish()

    @classmethod
    def read(cls, r: Reader, round_id: bytes) -> SurvivorSigs:
        n = r.count(MAX_NEIGHBOURS)
        return cls(round_id, tuple((r.ident(), r.fixed(SIG)) for _ in range(n)))


@dataclass(frozen=True, slots=True)
class UnmaskShare:
    """One revealed share: of ``owner``'s self-mask seed (``kind`` 0) or masking key (1).

    ``other_hash`` is SHA-256 of the share of the other secret, which stays
    with the holder; with it the server checks the owner's signature.
    """

    owner: str
    kind: int
    share: bytes
    other_hash: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class UnmaskShares:
    """Round 4: shares of survivors' self-mask seeds and of dropped clients' keys."""

    KIND: ClassVar[int] = 9
    round_id: bytes
    client: str
    shares: tuple[UnmaskShare, ...]

    def encode(self) -> bytes:
        w = _head(self.KIND, self.round_id).ident(self.client).u32(len(self.shares))
        for s in self.shares:
            w.ident(s.owner).u8(s.kind).fixed(s.share, SHARE_SIZE)
            w.fixed(s.other_hash, HASH).fixed(s.signature, SIG)
        return w.finish()

    @classmethod
    def read(cls, r: Reader, round_id: bytes) -> UnmaskShares:
        client = r.ident()
        n = r.count(MAX_NEIGHBOURS)
        shares = []
        for _ in range(n):
            owner, kind = r.ident(), r.u8()
            if kind not in (0, 1):
                raise DecodeError("unknown share kind")
            shares.append(
                UnmaskShare(owner, kind, r.fixed(SHARE_SIZE), r.fixed(HASH), r.fixed(SIG))
            )
        return cls(round_id, client, tuple(shares))


@dataclass(frozen=True, slots=True)
class Abort:
    """Server to client: the round is over without a result, and why."""

    KIND: ClassVar[int] = 10
    round_id: bytes
    reason: str

    def encode(self) -> bytes:
        return _head(self.KIND, self.round_id).text(self.reason[:MAX_REASON]).finish()

    @classmethod
    def read(cls, r: Reader, round_id: bytes) -> Abort:
        return cls(round_id, r.text(MAX_REASON))


Message = (
    AdvertiseKeys
    | RoundKeys
    | ShareKeys
    | ForwardedShares
    | MaskedInput
    | SurvivorSet
    | ConsistencySig
    | SurvivorSigs
    | UnmaskShares
    | Abort
)

_KINDS: dict[int, type[Message]] = {
    cls.KIND: cls
    for cls in (
        AdvertiseKeys,
        RoundKeys,
        ShareKeys,
        ForwardedShares,
        MaskedInput,
        SurvivorSet,
        ConsistencySig,
        SurvivorSigs,
        UnmaskShares,
        Abort,
    )
}


def decode(frame: bytes, *, max_size: int = MAX_FRAME) -> Message:
    """Parse one frame; DecodeError/SizeLimitExceeded for anything not exactly well-formed."""
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise DecodeError("a frame is bytes")
    if len(frame) > max_size:
        raise SizeLimitExceeded(f"frame of {len(frame)} bytes exceeds {max_size}")
    r = Reader(frame)
    if r.fixed(4) != MAGIC:
        raise DecodeError("not a secure-aggregation frame")
    if r.u8() != VERSION:
        raise DecodeError("unsupported secure-aggregation version")
    cls = _KINDS.get(r.u8())
    if cls is None:
        raise DecodeError("unknown secure-aggregation message kind")
    round_id = r.fixed(ROUND_ID_SIZE)
    msg = cls.read(r, round_id)
    r.end()
    return msg
