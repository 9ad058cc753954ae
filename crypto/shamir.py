"""Shamir t-of-n secret sharing (A. Shamir, "How to share a secret", CACM 1979).

Theory of operation
-------------------
The field is GF(p) with the Mersenne prime p = 2**521 - 1 (M521, the prime of
NIST's P-521 curve field), comfortably above any 64-byte secret. A secret of
``b <= 64`` bytes becomes the integer ``int.from_bytes(b"\\x01" + secret, "big")``
(the leading 0x01 sentinel keeps leading zero bytes and the length; the value
is below 2**520 < p). :func:`split` draws a random polynomial
``f(x) = s + a1 x + ... + a_{t-1} x^{t-1}`` with coefficients uniform in GF(p)
(``randbelow``, default :func:`secrets.randbelow`) and hands out ``(x, f(x))``
for ``x = 1..n``. Any ``t`` shares fix ``f`` and give ``s = f(0)`` by Lagrange
interpolation at zero; any ``t - 1`` shares are uniformly distributed whatever
the secret is, so they carry no information about it (perfect secrecy).

:func:`combine` uses the first ``threshold`` shares and, if more were given,
checks that every extra share lies on the same polynomial; a share that does
not is reported (DecodeError), as is a reconstructed value without the sentinel
(a weak check: with exactly ``threshold`` shares a corrupted one still yields a
valid-looking value with probability about 2**-9; extra shares are the real
check). This catches accidental corruption; shares are not authenticated here, which
is the caller's job (signed envelopes), as in Bonawitz et al. (CCS 2017).

Share encoding (69 bytes)::

    u8 version = 1 || u16 x (big-endian, 1..65535) || y (66 bytes big-endian, < p)
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from securemesh.errors import DecodeError, LocalError

__all__ = [
    "MAX_SECRET_SIZE",
    "MAX_SHARES",
    "PRIME",
    "SHARE_SIZE",
    "Share",
    "combine",
    "interpolate_at_zero",
    "split",
    "split_int",
]

PRIME = (1 << 521) - 1
MAX_SECRET_SIZE = 64
MAX_SHARES = 0xFFFF
_Y_SIZE = 66
_VERSION = 1
SHARE_SIZE = 1 + 2 + _Y_SIZE

RandBelow = Callable[[int], int]


@dataclass(frozen=True, slots=True)
class Share:
    """One point ``(x, y)`` of the sharing polynomial; ``1 <= x <= 65535``, ``0 <= y < PRIME``."""

    x: int
    y: int

    SIZE: ClassVar[int] = SHARE_SIZE

    def __post_init__(self) -> None:
        if type(self.x) is not int or not 1 <= self.x <= MAX_SHARES:
            raise DecodeError(f"share x must be in 1..{MAX_SHARES}")
        if type(self.y) is not int or not 0 <= self.y < PRIME:
            raise DecodeError("share y is outside the field")

    def to_bytes(self) -> bytes:
        return bytes([_VERSION]) + self.x.to_bytes(2, "big") + self.y.to_bytes(_Y_SIZE, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) != SHARE_SIZE:
            raise DecodeError(f"a share is exactly {SHARE_SIZE} bytes")
        if data[0] != _VERSION:
            raise DecodeError(f"unsupported share version {data[0]}")
        return cls(int.from_bytes(data[1:3], "big"), int.from_bytes(data[3:], "big"))

    def __repr__(self) -> str:  # a share is secret material
        return f"Share(x={self.x})"


def _eval(coefficients: Sequence[int], x: int, prime: int) -> int:
    acc = 0
    for coefficient in reversed(coefficients):
        acc = (acc * x + coefficient) % prime
    return acc


def split_int(
    secret: int,
    *,
    threshold: int,
    shares: int,
    prime: int = PRIME,
    randbelow: RandBelow = secrets.randbelow,
) -> list[tuple[int, int]]:
    """Share the field element ``secret``; returns points ``(x, f(x))`` for x = 1..shares.

    The low-level form (any prime, plain tuples) exists for tests that check
    the secrecy property exhaustively over a small field; use :func:`split`.
    """
    if type(threshold) is not int or type(shares) is not int:
        raise LocalError("threshold and shares are integers")
    if not 1 <= threshold <= shares:
        raise LocalError("need 1 <= threshold <= shares")
    if shares > MAX_SHARES or shares >= prime:
        raise LocalError(f"at most {min(MAX_SHARES, prime - 1)} shares")
    if not 0 <= secret < prime:
        raise LocalError("secret is outside the field")
    coefficients = [secret]
    for _ in range(threshold - 1):
        value = randbelow(prime)
        if not 0 <= value < prime:
            raise LocalError("randbelow returned a value outside [0, prime)")
        coefficients.append(value)
    return [(x, _eval(coefficients, x, prime)) for x in range(1, shares + 1)]


def interpolate_at_zero(points: Iterable[tuple[int, int]], *, prime: int = PRIME) -> int:
    """Lagrange interpolation of the polynomial through ``points``, evaluated at 0."""
    pts = list(points)
    xs = [x for x, _ in pts]
    if len(set(xs)) != len(xs):
        raise DecodeError("duplicate share x coordinates")
    if any(x % prime == 0 for x in xs):
        raise DecodeError("share x must not be 0")
    total = 0
    for i, (xi, yi) in enumerate(pts):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * xj % prime
                denominator = denominator * (xj - xi) % prime
        total = (total + yi * numerator * pow(denominator, -1, prime)) % prime
    return total


def _lagrange_at(points: Sequence[tuple[int, int]], x: int, prime: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * (x - xj) % prime
                denominator = denominator * (xi - xj) % prime
        total = (total + yi * numerator * pow(denominator, -1, prime)) % prime
    return total


def split(
    secret: bytes,
    *,
    threshold: int,
    shares: int,
    randbelow: RandBelow = secrets.randbelow,
) -> list[Share]:
    """Split ``secret`` (1..64 bytes) into ``shares`` shares; any ``threshold`` rebuild it."""
    if not isinstance(secret, bytes | bytearray) or not 1 <= len(secret) <= MAX_SECRET_SIZE:
        raise LocalError(f"a secret is 1..{MAX_SECRET_SIZE} bytes")
    value = int.from_bytes(b"\x01" + bytes(secret), "big")
    points = split_int(value, threshold=threshold, shares=shares, randbelow=randbelow)
    return [Share(x, y) for x, y in points]


def combine(shares: Sequence[Share], *, threshold: int | None = None) -> bytes:
    """Rebuild the secret from at least ``threshold`` shares (all given shares if ``None``).

    Extra shares beyond ``threshold`` must agree with the polynomial the first
    ``threshold`` define (DecodeError otherwise). Too few shares: LocalError.
    """
    items = list(shares)
    if not all(isinstance(s, Share) for s in items):
        raise LocalError("combine takes Share values")
    if threshold is None:
        threshold = len(items)
    if type(threshold) is not int or threshold < 1:
        raise LocalError("threshold must be a positive integer")
    if len(items) < threshold:
        raise LocalError(f"need at least {threshold} shares, got {len(items)}")
    if len({s.x for s in items}) != len(items):
        raise DecodeError("duplicate share x coordinates")
    base = [(s.x, s.y) for s in items[:threshold]]
    value = interpolate_at_zero(base)
    for extra in items[threshold:]:
        if _lagrange_at(base, extra.x, PRIME) != extra.y:
            raise DecodeError(f"share x={extra.x} is inconsistent with the others")
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    if raw[0] != 1 or not 2 <= len(raw) <= MAX_SECRET_SIZE + 1:
        raise DecodeError("shares do not reconstruct a valid secret")
    return raw[1:]
