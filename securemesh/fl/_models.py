"""Numpy models for federated learning: multinomial logistic regression and a small MLP.

Parameters are one flat float64 vector (what is aggregated); each model knows
its own layout. ``loss_grad`` returns the mean cross-entropy over a batch and
its gradient; the optimisation (SGD, FedProx's proximal term) lives in
:mod:`securemesh.fl._train`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from securemesh.errors import LocalError

__all__ = ["MLP", "FloatArray", "LogisticRegression", "Model"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class Model(Protocol):
    """What the FL algorithms need from a model."""

    @property
    def size(self) -> int:
        """The number of parameters."""
        ...

    def init(self, rng: np.random.Generator) -> FloatArray: ...

    def loss_grad(self, params: FloatArray, x: FloatArray, y: IntArray) -> tuple[float, FloatArray]:
        """Mean cross-entropy on (x, y) and its gradient with respect to ``params``."""
        ...

    def predict(self, params: FloatArray, x: FloatArray) -> IntArray: ...


def _softmax_xent(logits: FloatArray, y: IntArray) -> tuple[float, FloatArray]:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(p[np.arange(n), y] + 1e-12).mean())
    p[np.arange(n), y] -= 1.0
    return loss, p / n  # d loss / d logits


def _check(x: FloatArray, y: IntArray, features: int, classes: int) -> None:
    if x.ndim != 2 or x.shape[1] != features or len(y) != len(x):
        raise LocalError(f"expected x of shape (n, {features}) and n labels")
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise LocalError(f"labels must be in 0..{classes - 1}")


@dataclass(frozen=True)
class LogisticRegression:
    """Softmax regression: logits = x W + b; parameters [W (features x classes), b]."""

    features: int
    classes: int

    @property
    def size(self) -> int:
        return (self.features + 1) * self.classes

    def _split(self, params: FloatArray) -> tuple[FloatArray, FloatArray]:
        f, c = self.features, self.classes
        return params[: f * c].reshape(f, c), params[f * c :]

    def init(self, rng: np.random.Generator) -> FloatArray:
        return np.zeros(self.size)

    def loss_grad(self, params: FloatArray, x: FloatArray, y: IntArray) -> tuple[float, FloatArray]:
        _check(x, y, self.features, self.classes)
        w, b = self._split(params)
        loss, d = _softmax_xent(x @ w + b, y)
        return loss, np.concatenate([(x.T @ d).ravel(), d.sum(axis=0)])

    def predict(self, params: FloatArray, x: FloatArray) -> IntArray:
        w, b = self._split(params)
        return np.asarray((x @ w + b).argmax(axis=1), dtype=np.int64)


@dataclass(frozen=True)
class MLP:
    """One hidden ReLU layer: logits = relu(x W1 + b1) W2 + b2."""

    features: int
    hidden: int
    classes: int

    @property
    def size(self) -> int:
        return (self.features + 1) * self.hidden + (self.hidden + 1) * self.classes

    def _split(self, p: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        f, h, c = self.features, self.hidden, self.classes
        i = 0
        w1 = p[i : i + f * h].reshape(f, h)
        i += f * h
        b1 = p[i : i + h]
        i += h
        w2 = p[i : i + h * c].reshape(h, c)
        i += h * c
        return w1, b1, w2, p[i : i + c]

    def init(self, rng: np.random.Generator) -> FloatArray:
        f, h, c = self.features, self.hidden, self.classes
        w1 = rng.normal(0.0, np.sqrt(2.0 / f), (f, h))  # He initialisation
        w2 = rng.normal(0.0, np.sqrt(1.0 / h), (h, c))
        return np.concatenate([w1.ravel(), np.zeros(h), w2.ravel(), np.zeros(c)])

    def loss_grad(self, params: FloatArray, x: FloatArray, y: IntArray) -> tuple[float, FloatArray]:
        _check(x, y, self.features, self.classes)
        w1, b1, w2, b2 = self._split(params)
        pre = x @ w1 + b1
        hid = np.maximum(pre, 0.0)
        loss, d = _softmax_xent(hid @ w2 + b2, y)
        dh = (d @ w2.T) * (pre > 0)
        grad = [(x.T @ dh).ravel(), dh.sum(axis=0), (hid.T @ d).ravel(), d.sum(axis=0)]
        return loss, np.concatenate(grad)

    def predict(self, params: FloatArray, x: FloatArray) -> IntArray:
        w1, b1, w2, b2 = self._split(params)
        return np.asarray((np.maximum(x @ w1 + b1, 0.0) @ w2 + b2).argmax(axis=1), dtype=np.int64)
