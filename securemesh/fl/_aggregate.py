"""Aggregation modes: how the weighted mean of the clients' updates is computed.

A mode is an :class:`Aggregator`: ``aggregate(round_no, updates, dropouts)``
returns the weighted mean, the total weight and who made it into the sum.
Built in:

* ``plain`` (:class:`PlainAggregator`): the server sees every update; the
  baseline, and what a trusted server would do.
* ``secagg`` (:class:`SecAggAggregator`): updates are quantized
  (:class:`~securemesh.fl.Quantizer`) and summed by a SecAgg+ round; the
  server learns only the sum. In one process this drives
  :func:`~securemesh.fl.run_in_memory`.

* ``he`` (:class:`~securemesh.fl.HEAggregator`, ``securemesh/fl/_he.py``):
  each client encrypts its weighted update under the key owner's public CKKS
  context (``securemesh.he``); the aggregator adds ciphertexts holding only
  that public context; the key owner decrypts only the sum.

Other modes plug in with ``register_aggregator(name, factory)``, where
``factory(**options)`` returns an object with a ``name`` and the
``aggregate`` method below (the built-in names cannot be replaced).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from securemesh.crypto import Ed25519Signer, Signer
from securemesh.errors import ConfigError, LocalError
from securemesh.fl._config import SecAggConfig
from securemesh.fl._memory import run_in_memory
from securemesh.fl._models import FloatArray
from securemesh.fl._quant import Quantizer
from securemesh.fl._secagg import Exclusion, RoundAborted, SecAggClient, SecAggServer

__all__ = [
    "Aggregate",
    "Aggregator",
    "ClientUpdate",
    "PlainAggregator",
    "SecAggAggregator",
    "check_updates",
    "make_aggregator",
    "register_aggregator",
]


@dataclass(frozen=True)
class ClientUpdate:
    """One participant's update (float vector) and its weight (sample count)."""

    vector: FloatArray
    weight: int


@dataclass(frozen=True)
class Aggregate:
    mean: FloatArray
    total_weight: int
    survivors: tuple[str, ...]
    exclusions: tuple[Exclusion, ...] = ()


class Aggregator(Protocol):
    name: str

    def aggregate(
        self,
        round_no: int,
        updates: Mapping[str, ClientUpdate],
        dropouts: Mapping[str, str],
    ) -> Aggregate:
        """The weighted mean of ``updates`` over the clients that stay.

        ``dropouts`` names clients that vanish during the round and at which
        stage (:data:`~securemesh.fl.DROP_STAGES`): a simulation input for
        in-process runs; a networked aggregator sees real dropouts instead.
        Raises :class:`~securemesh.fl.RoundAborted` when no result is possible.
        """
        ...


def check_updates(updates: Mapping[str, ClientUpdate]) -> int:
    if not updates:
        raise LocalError("no updates to aggregate")
    sizes = {u.vector.shape for u in updates.values()}
    if len(sizes) != 1:
        raise LocalError("updates have different shapes")
    return int(next(iter(updates.values())).vector.size)


class PlainAggregator:
    name = "plain"

    def aggregate(
        self, round_no: int, updates: Mapping[str, ClientUpdate], dropouts: Mapping[str, str]
    ) -> Aggregate:
        check_updates(updates)
        # in plain mode an update either arrives or not: a client gone before "masked"
        # never sent it; one gone later already had
        early = {"advertise", "share", "masked"}
        stay = tuple(sorted(c for c in updates if dropouts.get(c) not in early))
        if not stay:
            raise RoundAborted("no update arrived")
        total = sum(updates[c].weight for c in stay)
        mean = sum(updates[c].vector * updates[c].weight for c in stay) / total
        return Aggregate(np.asarray(mean, dtype=np.float64), total, stay)


@dataclass
class SecAggAggregator:
    """SecAgg+ over the participants, every client in this process.

    ``clip`` is the per-coordinate clipping bound of the quantizer, ``bits``
    the ring, ``max_weight`` the largest sample count a client may claim
    (the quantizer refuses a ring that could overflow for the cohort).
    Identities (Ed25519) are made once per client id and kept.
    """

    clip: float = 1.0
    bits: int = 32
    max_weight: int = 10_000
    degree: int | None = None
    threshold: int | None = None
    name: str = "secagg"
    signers: dict[str, Signer] = field(default_factory=dict)
    last_bytes_per_client: float = 0.0

    def aggregate(
        self, round_no: int, updates: Mapping[str, ClientUpdate], dropouts: Mapping[str, str]
    ) -> Aggregate:
        length = check_updates(updates)
        cohort = tuple(sorted(updates))
        quant = Quantizer.fitting(
            bits=self.bits, clip=self.clip, max_clients=len(cohort), max_weight=self.max_weight
        )
        for c in cohort:
            if c not in self.signers:
                self.signers[c] = Ed25519Signer.generate()
        vks = {c: self.signers[c].verify_key for c in cohort}
        nonce = os.urandom(16)
        config = SecAggConfig(
            round_id=hashlib.sha256(round_no.to_bytes(8, "big") + nonce).digest()[:16],
            cohort=cohort,
            length=quant.encoded_length(length),
            graph_seed=os.urandom(32),
            bits=self.bits,
            degree=self.degree if self.degree is None else min(self.degree, len(cohort) - 1),
            threshold=self.threshold,
        )
        clients = {
            c: SecAggClient(
                config,
                c,
                self.signers[c],
                vks,
                vector=quant.encode(updates[c].vector, updates[c].weight),
            )
            for c in cohort
        }
        server = SecAggServer(config, vks)
        run = run_in_memory(server, clients, dropouts=dropouts)
        exclusions = tuple(server.take_exclusions())
        if server.result is None:
            raise RoundAborted(server.abort_reason or "aborted")
        sent = [run.bytes_sent.get(c, 0) for c in server.survivors]
        self.last_bytes_per_client = sum(sent) / max(len(sent), 1)
        mean, weight = quant.decode_mean(server.result)
        return Aggregate(mean, weight, server.survivors, exclusions)


AggregatorFactory = Callable[..., Aggregator]


def _he(**options: object) -> Aggregator:
    from securemesh.fl._he import HEAggregator  # noqa: PLC0415 - _he imports this module

    return HEAggregator(**options)  # type: ignore[arg-type]


_REGISTRY: dict[str, AggregatorFactory] = {
    "plain": PlainAggregator,
    "secagg": SecAggAggregator,
    "he": _he,
}
_BUILT_IN = frozenset(_REGISTRY)


def register_aggregator(name: str, factory: AggregatorFactory) -> None:
    """Make ``make_aggregator(name, **options)`` return ``factory(**options)``."""
    if not name.isidentifier() or name in _BUILT_IN:
        raise LocalError(f"cannot register an aggregator named {name!r}")
    _REGISTRY[name] = factory


def make_aggregator(mode: str, **options: object) -> Aggregator:
    factory = _REGISTRY.get(mode)
    if factory is None:
        raise ConfigError(f"unknown aggregation mode {mode!r} (plain, secagg, he, or registered)")
    return factory(**options)
