"""The ``he`` aggregation mode: FedAvg's weighted sum on CKKS ciphertexts (``securemesh.he``).

Three roles, three objects, and only one of them ever holds a secret key:

* :class:`HEModelOwner` — the **key owner** (the coordinator's model-owner
  role, a node with ``he-keyholder``). It makes the CKKS context
  (:class:`securemesh.he.SecretContext`), publishes the public context and
  decrypts **only the sum** (:meth:`HEModelOwner.decrypt_sum` refuses a sum of
  fewer than ``min_contributors`` updates).
* the **clients** — each loads the public context from its bytes (a context
  with a secret key is refused), clips its update per coordinate to
  ``clip``, multiplies it by its sample count ``n_i`` and appends ``n_i``
  (:func:`encrypt_update`): ``[n_i·Δ_i ‖ n_i]`` encrypted. The weighting is done
  by the client, so the aggregator learns neither the update nor the sample
  count, and the sum needs no multiplicative level (any preset works).
* :class:`HESum` — the **aggregator**. Built from the public context's bytes
  only (:func:`securemesh.he.load_public_context`: structure checked, then
  refused if it holds a secret key), it checks and adds the clients'
  ciphertexts (:class:`securemesh.he.EncryptedSum`); a malformed or foreign
  ciphertext excludes its sender (an :class:`~securemesh.fl.Exclusion`,
  audited by the federation) and the sum goes on with the others.

:class:`HEAggregator` drives one round with the three in one process (like
``plain`` and ``secagg``): the key owner decrypts ``[Σ n_i·Δ_i ‖ Σ n_i]``
and the weighted mean is their quotient.

**Error bound.** The decrypted sum of ``k`` contributions is within
``Preset.error_bound(k)`` (docs/he.md: ``32·N/Δ·2k`` per value) of the
plaintext sum, so the weighted mean is within ``error_bound(k) / Σ n_i`` of
plain FedAvg (:attr:`HEAggregator.last_error_bound`); the total weight is
an integer and must decrypt within the bound of one (else the sum is
refused as corrupted). The round is refused up front when the preset cannot
hold ``k · max_weight · clip`` or cannot give ``precision`` on a mean.

**Who must not collude.** The aggregator and the key owner: the aggregator
could hand the owner a single client's ciphertext to decrypt. In one process
they are separate objects (a test asserts that the context the aggregator
holds serializes without a secret key); over the bus they are separate
nodes (docs/federated-learning.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from securemesh import he
from securemesh.errors import ConfigError, DecodeError, LocalError
from securemesh.fl._aggregate import Aggregate, ClientUpdate, check_updates
from securemesh.fl._models import FloatArray
from securemesh.fl._secagg import Exclusion, RoundAborted

if TYPE_CHECKING:
    from securemesh.he import Preset

__all__ = ["STAGE", "HEAggregator", "HEModelOwner", "HESum", "encrypt_update"]

#: The stage an exclusion of this mode names (audited as ``fl.client_excluded``).
STAGE = "encrypted"
#: A client dropping at one of these stages never sent its ciphertext (DROP_STAGES).
_BEFORE_SENDING = frozenset({"advertise", "share", "masked"})


class HEModelOwner:
    """The key owner: keeps the CKKS secret key, publishes the public context,
    decrypts only sums of at least ``min_contributors`` updates."""

    def __init__(
        self, preset: str | Preset = "standard-8192", *, min_contributors: int = 2
    ) -> None:
        if min_contributors < 2:
            raise ConfigError("the key owner decrypts sums of at least 2 updates")
        self.preset = he.get_preset(preset) if isinstance(preset, str) else preset.validate()
        self.min_contributors = min_contributors
        self._secret = he.SecretContext(self.preset)

    def public_bytes(self) -> bytes:
        """The public context (public key only: no secret, Galois or relinearization keys)."""
        return self._secret.public_bytes()

    def decrypt_sum(
        self, frames: Sequence[bytes | memoryview], lengths: Sequence[int], count: int
    ) -> tuple[FloatArray, int]:
        """``(Σ n_i·Δ_i, Σ n_i)`` from the encrypted ``[Σ n_i·Δ_i ‖ Σ n_i]`` of ``count`` updates.

        DecodeError if the frames are not a sum under this context or the
        total weight does not decrypt to an integer within the error bound.
        """
        if count < self.min_contributors:
            raise LocalError(
                f"a sum of {count} update(s): the key owner decrypts only sums of at least "
                f"{self.min_contributors}"
            )
        plain = self._secret.decrypt(frames, lengths)
        weight = float(plain[-1])
        total = round(weight)
        if total < count or abs(weight - total) > self.preset.error_bound(count):
            raise DecodeError(
                f"the decrypted total weight {weight:.6g} is not a sample count of {count} "
                "updates: the sum is corrupted"
            )
        return np.asarray(plain[:-1], dtype=np.float64), total


def encrypt_update(
    public: Any, update: FloatArray, weight: int, *, clip: float, max_weight: int
) -> list[bytes]:
    """A client's ``[weight·clip(update) ‖ weight]`` encrypted under ``public`` (a
    :class:`securemesh.he.PublicContext`): one frame per chunk of ``slots`` values."""
    if not 1 <= weight <= max_weight:
        raise LocalError(f"a weight (sample count) is in 1..{max_weight}, not {weight}")
    clipped = np.clip(np.asarray(update, dtype=np.float64), -clip, clip)
    return he.encrypt_vector(public, np.append(clipped * weight, float(weight)))


class HESum:
    """The aggregator: the public context (from its bytes) and the running encrypted sum."""

    def __init__(self, public_context: bytes | memoryview, preset: Preset, length: int) -> None:
        self.public = he.load_public_context(public_context, preset)  # refuses a secret key
        self.lengths = he.chunk_lengths(length, preset.slots)
        self._sum = he.EncryptedSum(self.public, self.lengths, weighted=False)
        self.contributors: list[str] = []
        self.exclusions: list[Exclusion] = []

    def add(self, client: str, frames: Sequence[bytes | memoryview]) -> bool:
        """Check and add ``client``'s ciphertexts; exclude it (and return False) if they are
        malformed, oversized, foreign or a second contribution."""
        if client in self.contributors:
            self.exclusions.append(Exclusion(client, STAGE, "a second encrypted update"))
            return False
        try:
            self._sum.add(self._sum.load(frames))
        except (DecodeError, LocalError) as exc:
            self.exclusions.append(Exclusion(client, STAGE, f"encrypted update: {exc}"))
            return False
        self.contributors.append(client)
        return True

    def result_frames(self) -> list[bytes]:
        return self._sum.result_frames()

    def serialized_context(self) -> bytes:
        """The context this aggregator holds, serialized now (with everything it has)."""
        return bytes(self.public.ts.serialize())


@dataclass
class HEAggregator:
    """The ``he`` mode in one process: clients encrypt, :class:`HESum` adds, the owner decrypts.

    ``preset`` a :data:`securemesh.he.PRESETS` name; ``clip`` the per-coordinate
    clipping bound of an update; ``max_weight`` the largest sample count a client
    may claim; ``precision`` the absolute error per coordinate of the mean the
    round must meet (checked before the round against the preset's bound with
    every weight 1, the worst case). The key owner is made once and kept
    (``owner``); the aggregator is made afresh each round from the public bytes.
    """

    preset: str = "standard-8192"
    clip: float = 1.0
    max_weight: int = 10_000
    precision: float = 1e-4
    name: str = "he"
    owner: HEModelOwner | None = None
    last_sum: HESum | None = field(default=None, repr=False)
    last_error_bound: float = 0.0
    last_bytes_per_client: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise ConfigError("clip is a positive number")
        if self.max_weight < 1:
            raise ConfigError("max_weight is at least 1")
        if self.owner is None:
            self.owner = HEModelOwner(self.preset)
        elif self.owner.preset.name != self.preset:
            raise ConfigError(
                f"the key owner's preset is {self.owner.preset.name}, not {self.preset}"
            )

    def check(self, clients: int) -> None:
        """Refuse (ConfigError) a round the preset cannot hold or compute to ``precision``."""
        assert self.owner is not None
        self.owner.preset.check_job(
            precision=self.precision * clients,  # a mean divides the sum's error by Σn_i ≥ k
            max_contributors=clients,
            max_abs_value=self.clip * self.max_weight,
            max_weight=None,
        )

    def aggregate(
        self, round_no: int, updates: Mapping[str, ClientUpdate], dropouts: Mapping[str, str]
    ) -> Aggregate:
        assert self.owner is not None
        length = check_updates(updates)
        self.check(len(updates))
        preset = self.owner.preset
        public_bytes = self.owner.public_bytes()
        agg = HESum(public_bytes, preset, length + 1)
        self.last_sum = agg
        client_context = he.load_public_context(public_bytes, preset)  # what a client loads
        sent: list[int] = []
        for c in sorted(updates):
            if dropouts.get(c) in _BEFORE_SENDING:
                continue
            u = updates[c]
            try:
                frames = encrypt_update(
                    client_context, u.vector, u.weight, clip=self.clip, max_weight=self.max_weight
                )
            except LocalError as exc:  # the client refuses to send it: out of the sum
                agg.exclusions.append(Exclusion(c, STAGE, f"client refused: {exc}"))
                continue
            sent.append(sum(len(f) for f in frames))
            agg.add(c, frames)
        count = len(agg.contributors)
        if count < self.owner.min_contributors:
            raise RoundAborted(
                f"only {count} encrypted update(s) arrived; the key owner decrypts a sum of "
                f"at least {self.owner.min_contributors}"
            )
        total, weight = self.owner.decrypt_sum(agg.result_frames(), agg.lengths, count)
        self.last_bytes_per_client = sum(sent) / max(len(sent), 1)
        self.last_error_bound = preset.error_bound(count) / weight
        return Aggregate(total / weight, weight, tuple(agg.contributors), tuple(agg.exclusions))
