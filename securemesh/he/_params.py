"""CKKS parameter presets, checked for 128-bit security and for a job's precision.

Security
--------
A CKKS (RLWE) parameter set is secure at a level λ when the total bit length
of its coefficient modulus (every prime, the special prime included) stays
under the bound the HomomorphicEncryption.org Security Standard tabulates for
the ring dimension (Albrecht et al., "Homomorphic Encryption Security
Standard", 2018, Table 1: classical 128-bit, uniform ternary secret, sigma = 3.2,
the distribution Microsoft SEAL samples). :data:`HE_STANDARD_128` is that
column; :meth:`Preset.validate` refuses anything above it.

Precision (a stated, tested bound)
----------------------------------
A CKKS result is approximate. The error of one freshly encrypted slot is the
encoding rounding plus the encryption noise divided by the scale Δ = 2^s; its
average-case standard deviation is about ``sigma·N·sqrt(4/3)/Δ`` (Costache, Curtis,
Hales, Murphy, Ogilvie, Player, "On the precision loss in approximate
homomorphic encryption", 2022, §5). A multiplication by a plaintext weight
followed by a rescale adds the rounding of the rescale and the encoding of
the weight. :meth:`Preset.error_bound` states one bound for every result of a
job: ``K·N/Δ·(n + Σ|wᵢ|)`` with ``K = 32`` (n contributions, weights wᵢ; 1 each
when unweighted) — about 20 standard deviations of a fresh ciphertext per
contribution, and more than twice the largest error measured over repeated
trials for weighted sums (tests/he/test_he_ckks.py checks results against it).
A job's ``precision`` (the absolute error it accepts) must be at least that.

Magnitude
---------
After the last rescale a value ``v`` is stored as ``v·Δ`` modulo the first
prime q₀; it must stay under ``q₀/2``, so every result must be below
``2^(bits(q₀) - s - 1)`` in absolute value: :meth:`Preset.max_magnitude`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from securemesh.errors import ConfigError

__all__ = [
    "ERROR_CONSTANT",
    "HE_STANDARD_128",
    "PRESETS",
    "Preset",
    "get_preset",
]

#: HomomorphicEncryption.org Security Standard (2018), Table 1, 128-bit classical,
#: ternary secret: ring dimension N -> largest total coefficient-modulus bits (log q).
HE_STANDARD_128: Final[dict[int, int]] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}
#: SEAL's primes are at most 60 bits.
MAX_PRIME_BITS: Final = 60
#: The K of the error bound (module doc).
ERROR_CONSTANT: Final = 32.0
_SIGMA: Final = 3.2


@dataclass(frozen=True, slots=True)
class Preset:
    """One CKKS parameter set: ring dimension, coefficient-modulus primes, scale bits."""

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        """Values one ciphertext packs (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def levels(self) -> int:
        """Rescales available: the data primes after q₀ (the last prime is the special one)."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def max_magnitude(self) -> float:
        """The largest |value| a result may hold (module doc, *Magnitude*)."""
        return float(2 ** (self.coeff_mod_bit_sizes[0] - self.scale_bits - 1))

    @property
    def max_ciphertext_bytes(self) -> int:
        """An upper bound of one serialized ciphertext of this preset (uncompressed + framing)."""
        data_primes = len(self.coeff_mod_bit_sizes) - 1
        return 2 * self.poly_modulus_degree * data_primes * 8 + 4096

    @property
    def min_ciphertext_bytes(self) -> int:
        """A lower bound: compressed, a ciphertext is at least its random half (a pseudo-
        random polynomial does not compress), ``N·Σbits(qᵢ)/8`` bytes at the last level."""
        return self.poly_modulus_degree * self.coeff_mod_bit_sizes[0] // 8

    def validate(self) -> Preset:
        """Return the preset if it is ≥128-bit secure and well-formed; raise ConfigError."""
        n = self.poly_modulus_degree
        if n not in HE_STANDARD_128:
            raise ConfigError(
                f"preset {self.name}: poly modulus degree {n} is not one of "
                f"{sorted(HE_STANDARD_128)}"
            )
        if len(self.coeff_mod_bit_sizes) < 2:
            raise ConfigError(f"preset {self.name}: at least two primes (data and special)")
        if any(not 20 <= b <= MAX_PRIME_BITS for b in self.coeff_mod_bit_sizes):
            raise ConfigError(f"preset {self.name}: every prime has 20..60 bits")
        if self.total_bits > HE_STANDARD_128[n]:
            raise ConfigError(
                f"preset {self.name}: {self.total_bits} coefficient-modulus bits exceed the "
                f"{HE_STANDARD_128[n]} that N={n} allows for 128-bit security "
                "(HomomorphicEncryption.org standard, Table 1)"
            )
        middle = self.coeff_mod_bit_sizes[1:-1]
        if not 20 <= self.scale_bits <= min(self.coeff_mod_bit_sizes[0] - 1, *middle, 60):
            raise ConfigError(
                f"preset {self.name}: the scale (2^{self.scale_bits}) must be below the first "
                "prime and at most the middle primes (one rescale per level)"
            )
        return self

    def error_bound(self, count: int, weight_sum: float | None = None) -> float:
        """The absolute error bound of a sum of ``count`` contributions (module doc).

        ``weight_sum`` is Σ|wᵢ| of a weighted sum (None: unweighted, each weight 1).
        """
        weights = float(count) if weight_sum is None else weight_sum
        return ERROR_CONSTANT * self.poly_modulus_degree / self.scale * (count + weights)

    def score_error_bound(self, weight_l1: float) -> float:
        """The absolute error bound of a linear score ``⟨x, w⟩ + b`` (``weight_l1`` = Σ|wᵢ|):
        the weighted bound times the log2(slots) rotations that sum the slots (each adds
        key-switching noise)."""
        return self.error_bound(1, weight_l1) * math.log2(self.slots)

    def fresh_noise_std(self) -> float:
        """The average-case standard deviation of one fresh slot (module doc)."""
        return _SIGMA * self.poly_modulus_degree * math.sqrt(4 / 3) / self.scale

    def check_job(
        self,
        *,
        precision: float,
        max_contributors: int,
        max_abs_value: float,
        max_weight: float | None,
        squares: bool = False,
    ) -> None:
        """Refuse a job this preset cannot compute to ``precision`` (ConfigError).

        ``max_abs_value`` bounds every input value, ``max_weight`` every weight
        (None: unweighted), ``squares`` whether the job also sums squares (variance).
        """
        weighted = max_weight is not None
        if weighted and self.levels < 1:
            raise ConfigError(f"preset {self.name} has no level for weights")
        w = 1.0 if max_weight is None else max_weight
        bound = self.error_bound(max_contributors, max_contributors * w if weighted else None)
        if precision < bound:
            raise ConfigError(
                f"preset {self.name} gives an error up to {bound:.3g} for {max_contributors} "
                f"contributions; the job asks for {precision:.3g} (choose a larger scale)"
            )
        value = max_abs_value**2 if squares else max_abs_value
        if max_contributors * w * value >= self.max_magnitude:
            raise ConfigError(
                f"preset {self.name}: a result may reach {max_contributors * w * value:.3g}, "
                f"above the {self.max_magnitude:.3g} this preset can hold"
            )


#: The presets a job names (each validated at import). ``fast-4096`` is for tests and
#: small readings (about 2 decimal digits per contribution); ``score-4096`` for linear
#: scoring (its Galois keys, ~6 MB, fit one frame; a finer scale than fast-4096);
#: ``standard-8192`` is the default (one level: weights); ``deep-8192`` has two
#: levels (weights, then a dot product); ``wide-16384`` four levels and 8,192 slots per ciphertext.
PRESETS: Final[dict[str, Preset]] = {
    p.name: p.validate()
    for p in (
        Preset("fast-4096", 4096, (40, 20, 40), 20),
        Preset("score-4096", 4096, (40, 25, 44), 25),
        Preset("standard-8192", 8192, (60, 40, 60), 40),
        Preset("deep-8192", 8192, (60, 40, 40, 60), 40),
        Preset("wide-16384", 16384, (60, 40, 40, 40, 40, 60), 40),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ConfigError if there is none."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown HE preset {name!r} (one of {sorted(PRESETS)})") from None
