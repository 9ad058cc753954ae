"""Local training for FedAvg (McMahan et al., AISTATS 2017) and FedProx (Li et al., MLSys 2020).

A client starts from the global parameters w_g and runs ``epochs`` passes of
minibatch SGD over its own data. FedProx adds the proximal term
``(mu / 2) * ||w - w_g||^2`` to the local objective, whose gradient is
``mu * (w - w_g)``: it keeps heterogeneous clients near the global model.
With ``mu = 0`` FedProx *is* FedAvg (a test checks they agree bit for bit).
The client reports its update ``w - w_g`` and its sample count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from securemesh.errors import ConfigError
from securemesh.fl._models import FloatArray, IntArray, Model

__all__ = ["LocalTraining", "train_local"]


@dataclass(frozen=True)
class LocalTraining:
    algorithm: Literal["fedavg", "fedprox"] = "fedavg"
    mu: float = 0.0
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1

    def __post_init__(self) -> None:
        if self.algorithm not in ("fedavg", "fedprox"):
            raise ConfigError("algorithm is fedavg or fedprox")
        if self.mu < 0 or (self.algorithm == "fedavg" and self.mu != 0):
            raise ConfigError("mu is >= 0, and only FedProx has one")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError("epochs, batch_size and lr must be positive")


def train_local(
    model: Model,
    global_params: FloatArray,
    x: FloatArray,
    y: IntArray,
    spec: LocalTraining,
    *,
    rng: np.random.Generator,
) -> FloatArray:
    """The client's update ``w - w_g`` after local training (``rng``: batch order only)."""
    w = np.array(global_params, dtype=np.float64, copy=True)
    n = len(y)
    for _ in range(spec.epochs):
        order = rng.permutation(n)
        for start in range(0, n, spec.batch_size):
            batch = order[start : start + spec.batch_size]
            _, grad = model.loss_grad(w, x[batch], y[batch])
            if spec.algorithm == "fedprox":
                grad = grad + spec.mu * (w - global_params)
            w -= spec.lr * grad
    return w - global_params
