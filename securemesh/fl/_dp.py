"""Client-level differential privacy for FedAvg: clipping, Gaussian noise, an RDP accountant.

Theory of operation
-------------------
DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent
Language Models", ICLR 2018): each participant's update is clipped to L2
norm ``clip`` (C), the updates are summed, Gaussian noise N(0, (z C)^2 I)
is added to the sum (z = ``noise_multiplier``) and the sum is divided by
the fixed number of participants m. Adding or removing one client changes
the sum by at most C, so one round is the Gaussian mechanism with
sensitivity C and noise z C.

With secure aggregation the server never sees an individual update, so the
noise is added by the clients: each adds N(0, (z C)^2 / m) to its clipped
update, and the sum of m such draws is N(0, (z C)^2). If clients drop out,
less noise reaches the sum (m' / m of the variance); the accountant below
then overstates the privacy, and :func:`round_noise_ok` lets the caller
refuse such a round (the FL driver does).

Accountant: Rényi DP (Mironov, "Rényi Differential Privacy", CSF 2017). The
Gaussian mechanism with sensitivity 1 and noise z is (a, a / (2 z^2))-RDP
for every order a > 1 (Prop. 7); RDP composes additively over T rounds
(Prop. 1); and (a, r)-RDP implies (r + log(1/delta) / (a - 1), delta)-DP
(Prop. 3). We minimise over a grid of orders a. This ignores privacy
amplification by subsampling clients, so the epsilon reported is an upper
bound (conservative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from securemesh.errors import ConfigError
from securemesh.fl._models import FloatArray

__all__ = ["ClientDP", "clip_update", "epsilon_for", "round_noise_ok"]

_ALPHAS = [1.0 + x / 10.0 for x in range(1, 100)] + list(range(11, 257))


@dataclass(frozen=True)
class ClientDP:
    clip: float
    noise_multiplier: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not self.clip > 0 or not self.noise_multiplier > 0:
            raise ConfigError("clip and noise_multiplier must be positive")
        if not 0 < self.delta < 1:
            raise ConfigError("delta must be in (0, 1)")

    def epsilon(self, rounds: int) -> float:
        return epsilon_for(self.noise_multiplier, rounds, self.delta)

    def privatize(
        self, update: FloatArray, participants: int, rng: np.random.Generator
    ) -> FloatArray:
        """Clip, then add this client's share of the round's Gaussian noise."""
        std = self.noise_multiplier * self.clip / math.sqrt(participants)
        return clip_update(update, self.clip) + rng.normal(0.0, std, update.shape)


def clip_update(update: FloatArray, clip: float) -> FloatArray:
    norm = float(np.linalg.norm(update))
    return update * min(1.0, clip / norm) if norm > 0 else update.copy()


def epsilon_for(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε of ``rounds`` compositions of the Gaussian mechanism with noise ``z`` (RDP, above)."""
    if rounds < 1:
        return 0.0
    z2 = noise_multiplier**2
    return min(rounds * a / (2 * z2) + math.log(1 / delta) / (a - 1) for a in _ALPHAS)


def round_noise_ok(survivors: int, participants: int, slack: float = 0.0) -> bool:
    """Whether enough noise reached the sum: ``survivors >= (1 - slack) * participants``."""
    return survivors >= (1.0 - slack) * participants
