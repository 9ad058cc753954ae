"""The mask PRG for secure aggregation: a 256-bit seed expanded into ring elements.

Theory of operation
-------------------
Bonawitz et al. (CCS 2017, §4) mask each client's quantized update with
``PRG(s)`` vectors over Z_{2^bits}: pairwise masks from key agreement and a
self mask, cancelled or removed by the server. The PRG here is the ChaCha20
stream cipher (RFC 8439) keyed with the **full 32-byte seed** (no folding, no
Mersenne Twister), through ``cryptography``'s ``algorithms.ChaCha20``, which
takes a 16-byte block ``counter (4 bytes, little-endian) || nonce (12 bytes)``
(the last four words of the RFC 8439 §2.3 state). We fix:

* counter = 0,
* nonce   = ``SHA-256(b"securemesh/prg/v1\\x00" || u8(bits) || label)[:12]``,

so different ``label`` values (e.g. round number, pair, mask kind) and ring
sizes give independent streams from one seed. The keystream is read as
little-endian 32-bit words (``bits <= 32``, dtype ``uint32``) or 64-bit words
(``bits <= 64``, dtype ``uint64``) and reduced mod 2**bits by masking the high
bits, which keeps elements exactly uniform. One stream is at most 2**32 ChaCha
blocks; :data:`MAX_LENGTH` stays far below that.

This module imports numpy; :mod:`securemesh.crypto` does not import it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from securemesh.errors import LocalError

__all__ = ["MAX_LENGTH", "PRG_DOMAIN", "SEED_SIZE", "expand_mask", "prg_nonce"]

SEED_SIZE = 32
MAX_LENGTH = 1 << 28
PRG_DOMAIN = b"securemesh/prg/v1\x00"


def prg_nonce(bits: int, label: bytes) -> bytes:
    """The 16-byte ChaCha20 counter||nonce block for ``bits`` and ``label``."""
    digest = hashlib.sha256(PRG_DOMAIN + bytes([bits]) + bytes(label)).digest()
    return b"\x00\x00\x00\x00" + digest[:12]


def expand_mask(
    seed: bytes, length: int, *, bits: int = 32, label: bytes = b""
) -> npt.NDArray[np.unsignedinteger]:
    """``length`` pseudorandom elements of Z_{2^bits}, deterministic in (seed, bits, label)."""
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_SIZE:
        raise LocalError(f"a PRG seed is exactly {SEED_SIZE} bytes")
    if type(bits) is not int or not 1 <= bits <= 64:
        raise LocalError("bits must be an integer in 1..64")
    if type(length) is not int or not 0 <= length <= MAX_LENGTH:
        raise LocalError(f"length must be an integer in 0..{MAX_LENGTH}")
    if not isinstance(label, bytes | bytearray):
        raise LocalError("label is bytes")
    width = 4 if bits <= 32 else 8
    cipher = Cipher(algorithms.ChaCha20(bytes(seed), prg_nonce(bits, label)), mode=None)
    stream = cipher.encryptor().update(bytes(length * width))
    if width == 4:
        words32 = np.frombuffer(stream, dtype="<u4").astype(np.uint32)
        if bits < 32:
            words32 &= np.uint32((1 << bits) - 1)
        return words32
    words64 = np.frombuffer(stream, dtype="<u8").astype(np.uint64)
    if bits < 64:
        words64 &= np.uint64((1 << bits) - 1)
    return words64
