"""CKKS with TenSEAL: the key owner's secret context, public contexts, chunks, sums, scores.

This is the only module (with the HE service and client above it) that
imports ``tenseal``; ``securemesh.he`` loads it lazily, so a device that
never encrypts never loads TenSEAL.

* :class:`SecretContext` — the key owner's context (secret key kept here and
  never serialized); :meth:`SecretContext.public_bytes` is the public context
  for the job: public key, plus Galois keys only when the job needs rotations
  (a dot product), never relinearization keys (no job multiplies ciphertexts).
* :func:`load_public_context` — a peer's public context, checked structurally
  first (:func:`~securemesh.he._frames.check_public_context`), then parsed by
  TenSEAL inside ``try``, then checked again: no secret key, the preset's
  parameters and scale. Its :attr:`PublicContext.digest` (SHA-256 of the bytes)
  binds contributions and results to it.
* :func:`encrypt_vector` — a vector as one ciphertext per ``slots`` values
  (chunked and packed; the last chunk may be shorter).
* :func:`load_chunk` — one chunk frame, structure-checked before TenSEAL.
* :class:`EncryptedSum` — a running (weighted) sum of contributions, chunk by chunk.
* :func:`score` — ``⟨x, w⟩ + b`` of an encrypted ``x`` and plaintext ``w``, ``b``.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import tenseal as ts

from securemesh.errors import DecodeError, LocalError
from securemesh.he._frames import ForeignCiphertext, check_ciphertext, check_public_context
from securemesh.he._params import Preset

__all__ = [
    "EncryptedSum",
    "PublicContext",
    "SecretContext",
    "chunk_lengths",
    "decrypt_chunks",
    "encrypt_vector",
    "load_chunk",
    "load_public_context",
    "score",
]

#: Largest serialized public context accepted (Galois keys of fast-4096 are ~6 MB).
MAX_CONTEXT_BYTES = 16 * 1024 * 1024


def chunk_lengths(length: int, slots: int) -> list[int]:
    """How a vector of ``length`` values is cut into ciphertexts of at most ``slots``."""
    if length < 1:
        raise LocalError("a vector holds at least one value")
    full, rest = divmod(length, slots)
    return [slots] * full + ([rest] if rest else [])


def _new_tenseal_context(preset: Preset) -> Any:
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        preset.poly_modulus_degree,
        coeff_mod_bit_sizes=list(preset.coeff_mod_bit_sizes),
    )
    ctx.global_scale = preset.scale
    return ctx


class PublicContext:
    """A public CKKS context (no secret key) of a preset, and the digest of its bytes."""

    def __init__(self, preset: Preset, tenseal_context: Any, blob: bytes) -> None:
        self.preset = preset
        self.ts = tenseal_context
        self.blob = blob
        self.digest = hashlib.sha256(blob).hexdigest()
        self.has_galois_keys = bool(tenseal_context.has_galois_keys())


class SecretContext:
    """The key owner's context: keeps the secret key; hands out the public one."""

    def __init__(self, preset: Preset, *, galois_keys: bool = False) -> None:
        self.preset = preset.validate()
        self._ctx = _new_tenseal_context(preset)
        self.galois_keys = galois_keys
        if galois_keys:
            self._ctx.generate_galois_keys()
        public = self._ctx.copy()
        public.make_context_public()
        blob = public.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=galois_keys,
            save_relin_keys=False,
        )
        self.public = PublicContext(preset, public, blob)

    def public_bytes(self) -> bytes:
        """The public context to publish: public key (+ Galois keys if asked), no secret key."""
        return self.public.blob

    def decrypt(self, frames: Sequence[bytes | memoryview], lengths: Sequence[int]) -> np.ndarray:
        """Decrypt result chunks (checked like any peer's frames) into one float64 vector."""
        return decrypt_chunks(self._ctx, self.preset, frames, lengths)


def load_public_context(blob: bytes | memoryview, preset: Preset) -> PublicContext:
    """A peer's public context for ``preset``; DecodeError if it is not exactly that."""
    check_public_context(blob, max_size=MAX_CONTEXT_BYTES)
    data = bytes(blob)
    try:
        ctx = ts.context_from(data)
    except Exception as exc:  # TenSEAL/SEAL raise RuntimeError, ValueError, ...
        raise DecodeError("the public context does not load") from exc
    if ctx.has_secret_key() or ctx.is_private():
        raise DecodeError("the context holds a secret key: only a public context is accepted")
    key_data = ctx.seal_context().data.key_context_data()
    if (
        key_data.parms().poly_modulus_degree() != preset.poly_modulus_degree
        or key_data.total_coeff_modulus_bit_count() != preset.total_bits
    ):
        raise DecodeError(f"the context's parameters are not those of preset {preset.name}")
    try:
        scale = float(ctx.global_scale)
    except Exception as exc:
        raise DecodeError("the context has no global scale") from exc
    if scale != preset.scale:
        raise DecodeError(f"the context's scale is not that of preset {preset.name}")
    return PublicContext(preset, ctx, data)


def encrypt_vector(public: PublicContext, values: Sequence[float] | np.ndarray) -> list[bytes]:
    """``values`` encrypted under ``public``: one serialized ciphertext per chunk."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise LocalError("a vector to encrypt must hold finite numbers")
    slots = public.preset.slots
    out: list[bytes] = []
    for start in range(0, len(arr), slots):
        out.append(ts.ckks_vector(public.ts, arr[start : start + slots]).serialize())
    if not out:
        raise LocalError("a vector holds at least one value")
    return out


def load_chunk(
    ctx: Any, preset: Preset, frame: bytes | memoryview, length: int, *, fresh: bool = True
) -> Any:
    """One chunk frame as a TenSEAL vector of ``length`` values under ``ctx``.

    ``fresh``: a contribution, encrypted at the preset's scale exactly (a result
    after a rescale has another scale). The structure is checked first;
    TenSEAL's parser then runs inside ``try`` (SEAL refuses a ciphertext of
    other parameters); DecodeError on any failure.
    """
    shape = check_ciphertext(
        frame,
        slots=preset.slots,
        scale=preset.scale if fresh else None,
        min_size=preset.min_ciphertext_bytes,
        max_size=preset.max_ciphertext_bytes,
    )
    if shape.length != length:
        raise DecodeError(f"the chunk holds {shape.length} values, the job expects {length}")
    try:
        vec = ts.ckks_vector_from(ctx, bytes(frame))
    except Exception as exc:
        raise ForeignCiphertext("the ciphertext does not load under the job's context") from exc
    if vec.size() != length:
        raise DecodeError("the loaded chunk has the wrong size")
    if fresh:
        # a ciphertext switched down to a lower level loads too (its parameters are in
        # the chain) but would drag the sum down with it and leave no level for weights
        try:
            level_ok = vec.ciphertext()[0].parms_id() == ctx.seal_context().data.first_parms_id()
        except Exception as exc:
            raise ForeignCiphertext("the ciphertext's level cannot be read") from exc
        if not level_ok:
            raise ForeignCiphertext("the ciphertext is not at the context's first level")
    return vec


def decrypt_chunks(
    ctx: Any, preset: Preset, frames: Sequence[bytes | memoryview], lengths: Sequence[int]
) -> np.ndarray:
    if len(frames) != len(lengths):
        raise DecodeError(f"{len(frames)} result chunks, expected {len(lengths)}")
    parts = [
        np.asarray(load_chunk(ctx, preset, frame, n, fresh=False).decrypt(), dtype=np.float64)
        for frame, n in zip(frames, lengths, strict=True)
    ]
    return np.concatenate(parts)


class EncryptedSum:
    """The running sum ``Σ wᵢ·xᵢ`` of contributions, one TenSEAL vector per chunk.

    Thread-safe (:meth:`add` may run in several worker threads). Weighted sums
    multiply each chunk by its plaintext weight (one rescale, so every
    contribution of a weighted job is multiplied, weight 1 included, to keep
    the scales equal).
    """

    def __init__(self, public: PublicContext, lengths: Sequence[int], *, weighted: bool) -> None:
        self.public = public
        self.lengths = list(lengths)
        self.weighted = weighted
        self.count = 0
        self.weight_sum = 0.0
        self._totals: list[Any] | None = None
        self._lock = threading.Lock()

    def load(self, frames: Sequence[bytes | memoryview]) -> list[Any]:
        """Check and load one contribution's frames (all its chunks); DecodeError."""
        if len(frames) != len(self.lengths):
            raise DecodeError(f"{len(frames)} chunks, the job expects {len(self.lengths)}")
        preset = self.public.preset
        return [
            load_chunk(self.public.ts, preset, f, n)
            for f, n in zip(frames, self.lengths, strict=True)
        ]

    def add(self, chunks: list[Any], weight: float = 1.0) -> None:
        """Add one loaded contribution (from :meth:`load`) with ``weight``."""
        if not (math.isfinite(weight) and weight > 0):
            raise LocalError("a weight is a positive finite number")
        if not self.weighted and weight != 1.0:
            raise LocalError("an unweighted sum takes weight 1")
        try:
            if self.weighted:
                chunks = [c * weight for c in chunks]
            with self._lock:
                if self._totals is None:
                    self._totals = chunks
                else:
                    # add into copies: a chunk that fails leaves the total as it was
                    new = [t + c for t, c in zip(self._totals, chunks, strict=True)]
                    self._totals = new
                self.count += 1
                self.weight_sum += weight
        except Exception as exc:  # TenSEAL refuses to combine them (scale, level, size)
            raise ForeignCiphertext("the contribution does not combine with the sum") from exc

    def result_frames(self) -> list[bytes]:
        """The encrypted sum, one serialized ciphertext per chunk (LocalError if empty)."""
        with self._lock:
            if self._totals is None:
                raise LocalError("no contribution was added")
            return [t.serialize() for t in self._totals]


def score(
    public: PublicContext,
    frames: Sequence[bytes | memoryview],
    lengths: Sequence[int],
    weights: np.ndarray,
    bias: float,
) -> bytes:
    """``⟨x, w⟩ + bias`` of the encrypted ``x`` (chunks) and plaintext ``w``: one ciphertext.

    Needs the context's Galois keys (the dot product sums the slots by rotations).
    """
    if not public.has_galois_keys:
        raise DecodeError("scoring needs a public context with Galois keys")
    if len(weights) != sum(lengths):
        raise DecodeError(f"the input has {sum(lengths)} values, the model {len(weights)}")
    total: Any = None
    start = 0
    for frame, n in zip(frames, lengths, strict=True):
        chunk = load_chunk(public.ts, public.preset, frame, n)
        part = chunk.dot(weights[start : start + n].tolist())
        start += n
        total = part if total is None else total + part
    if total is None:
        raise DecodeError("no input chunk")
    return bytes((total + bias).serialize())
