"""Quantizing float updates into the ring Z_{2^bits}, and back, for secure aggregation.

Theory of operation
-------------------
Secure aggregation sums integers mod 2^bits, so each client maps its update
x (floats) into the ring first, as Bonawitz et al. (§3) and Bell et al.
(§6) assume:

1. **Clip** every coordinate to [-c, c] (``clip``).
2. **Scale and round stochastically**: ``q = floor((x + c) / (2c) * L + u)``
   with u uniform in [0, 1), so q is an integer in [0, L] with E[q] the exact
   scaled value (unbiased; Suresh et al., ICML 2017). ``L`` is ``levels``.
   The uniforms come from the ChaCha20 PRG (:mod:`securemesh.crypto.prg`)
   under a 32-byte seed: from the OS CSPRNG by default, or given by the caller
   for reproducible tests.
3. **Weight**: multiply by the client's sample count w (an integer in
   1..``max_weight``), and append w itself as one last element, so the sum
   carries the total weight W and the server never needs the individual
   counts.

The server's sum S = sum_i w_i q_i, and the weighted mean of the clipped
updates is ``(S * 2c / L - c W) / W``.

**No overflow, by construction.** Every element of the sum is at most
``n * max_weight * L`` (and the weight element at most ``n * max_weight``).
:class:`Quantizer` refuses (``ConfigError``) any configuration in which that
bound reaches 2^bits for the declared maximum cohort ``max_clients``, and a
client refuses a weight above ``max_weight``: a ring that could wrap is never
used, rather than warned about. :meth:`Quantizer.fitting` picks the largest
``levels`` that is safe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from securemesh.crypto.prg import expand_mask
from securemesh.errors import ConfigError, LocalError

__all__ = ["Quantizer"]

FloatVector = npt.NDArray[np.float64]
_SEED = 32


@dataclass(frozen=True)
class Quantizer:
    """Clip to [-clip, clip], map to 0..levels, weight by sample count, in Z_{2^bits}."""

    bits: int
    clip: float
    levels: int
    max_clients: int
    max_weight: int = 1

    def __post_init__(self) -> None:
        if type(self.bits) is not int or not 8 <= self.bits <= 62:
            raise ConfigError("bits must be in 8..62")
        if not (isinstance(self.clip, float | int) and np.isfinite(self.clip) and self.clip > 0):
            raise ConfigError("clip must be a positive finite number")
        for name in ("levels", "max_clients", "max_weight"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"{name} must be a positive integer")
        bound = self.max_clients * self.max_weight * self.levels
        if bound >= 1 << self.bits:
            raise ConfigError(
                f"the sum can reach {bound} >= 2**{self.bits}: {self.max_clients} clients x "
                f"weight {self.max_weight} x {self.levels} levels would overflow the ring; "
                f"use more bits, fewer levels, or a smaller max weight"
            )

    @classmethod
    def fitting(cls, *, bits: int, clip: float, max_clients: int, max_weight: int = 1) -> Quantizer:
        """The finest quantizer that cannot overflow: the largest safe ``levels``."""
        levels = ((1 << bits) - 1) // (max_clients * max_weight)
        if levels < 2:
            raise ConfigError(f"2**{bits} is too small for {max_clients} x weight {max_weight}")
        return cls(bits, float(clip), levels, max_clients, max_weight)

    @property
    def dtype(self) -> str:
        return "uint32" if self.bits <= 32 else "uint64"

    @property
    def step(self) -> float:
        """The quantization step 2c / L."""
        return 2.0 * self.clip / self.levels

    def encoded_length(self, length: int) -> int:
        return length + 1

    def encode(
        self, update: FloatVector, weight: int = 1, *, seed: bytes | None = None
    ) -> npt.NDArray[np.unsignedinteger]:
        """The ring vector (``len(update) + 1`` elements) for one client's update."""
        x = np.asarray(update, dtype=np.float64)
        if x.ndim != 1:
            raise LocalError("an update is a flat vector")
        if not np.all(np.isfinite(x)):
            raise LocalError("an update must be finite")
        if type(weight) is not int or not 1 <= weight <= self.max_weight:
            raise LocalError(f"weight must be an integer in 1..{self.max_weight}")
        seed = os.urandom(_SEED) if seed is None else seed
        u = expand_mask(seed, x.size, bits=32, label=b"securemesh/fl/quant/v1")
        # in place, one buffer: (clip(x) + c) * L / 2c + u, floored, kept in 0..L
        s = np.clip(x, -self.clip, self.clip)
        s += self.clip
        s *= self.levels / (2 * self.clip)
        s += u * (1.0 / 4294967296.0)
        np.floor(s, out=s)
        np.clip(s, 0, self.levels, out=s)  # float rounding at the top edge
        out = np.empty(x.size + 1, dtype=self.dtype)
        out[:-1] = s
        if weight != 1:
            out[:-1] *= self.dtype_type(weight)
        out[-1] = weight
        return out

    def dtype_type(self, value: int) -> np.unsignedinteger:
        return np.dtype(self.dtype).type(value)  # type: ignore[no-any-return]

    def decode_mean(self, total: npt.NDArray[np.unsignedinteger]) -> tuple[FloatVector, int]:
        """The weighted mean of the clipped updates, and the total weight, from the ring sum."""
        arr = np.asarray(total)
        if arr.ndim != 1 or arr.size < 2:
            raise LocalError("a quantized sum has at least two elements")
        weight = int(arr[-1])
        if weight < 1:
            raise LocalError("the sum carries no weight")
        s = arr[:-1].astype(np.float64)
        return (s * self.step - self.clip * weight) / weight, weight
