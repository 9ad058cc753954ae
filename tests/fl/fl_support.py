"""Helpers for the secure-aggregation tests: a cohort of real Ed25519 identities."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np

from securemesh.crypto import Ed25519Signer, Signer
from securemesh.fl import SecAggClient, SecAggConfig, SecAggServer


@dataclass
class Cohort:
    config: SecAggConfig
    signers: dict[str, Signer]
    verify_keys: dict[str, bytes]
    inputs: dict[str, np.ndarray]

    def clients(self, **overrides: Signer) -> dict[str, SecAggClient]:
        return {
            c: SecAggClient(
                self.config,
                c,
                overrides.get(c, self.signers[c]),
                self.verify_keys,
                vector=self.inputs[c],
            )
            for c in self.config.cohort
        }

    def server(self) -> SecAggServer:
        return SecAggServer(self.config, self.verify_keys)

    def expected(self, clients: object) -> np.ndarray:
        total = np.zeros(self.config.length, dtype=np.uint64)
        for c in clients:  # type: ignore[attr-defined]
            total += self.inputs[c].astype(np.uint64)
        return (total & np.uint64(self.config.mask)).astype(self.config.dtype)


def make_cohort(
    n: int,
    length: int = 257,
    *,
    degree: int | None = None,
    threshold: int | None = None,
    bits: int = 32,
    seed: int = 0,
) -> Cohort:
    ids = [f"dev-{i:03d}" for i in range(n)]
    signers: dict[str, Signer] = {c: Ed25519Signer.generate() for c in ids}
    config = SecAggConfig(
        round_id=os.urandom(16),
        cohort=tuple(ids),
        length=length,
        graph_seed=os.urandom(32),
        bits=bits,
        degree=degree,
        threshold=threshold,
    )
    rng = np.random.default_rng(seed)  # test inputs only; masks come from the ChaCha20 PRG
    dtype = np.dtype(config.dtype)
    inputs = {c: rng.integers(0, 1 << bits, length, dtype=dtype) for c in ids}
    return Cohort(config, signers, {c: s.verify_key for c, s in signers.items()}, inputs)


def pick_dropouts(cohort: Cohort, fraction: float, seed: int = 1) -> list[str]:
    """``fraction`` of the cohort, drawn so that every holder set keeps >= t members.

    SecAgg+ rounds can only finish when that holds (Bell et al. choose the
    degree so that it holds with high probability); the tests want the rounds
    that should finish.
    """
    cfg = cohort.config
    k = round(fraction * len(cfg.cohort))
    rnd = random.Random(seed)
    for _ in range(10_000):
        dropped = set(rnd.sample(cfg.cohort, k))
        if all(sum(h not in dropped for h in cfg.holders(c)) >= cfg.t for c in cfg.cohort):
            return sorted(dropped)
    raise AssertionError("no admissible dropout set")


class ShareForger:
    """A client identity that signs everything correctly except its secret shares."""

    def __init__(self, inner: Ed25519Signer) -> None:
        self._inner = inner
        self._other = Ed25519Signer.generate()

    @property
    def verify_key(self) -> bytes:
        return self._inner.verify_key

    def sign(self, data: bytes) -> bytes:
        if data.startswith(b"securemesh/fl/secagg/v1/share\x00"):
            return self._other.sign(data)
        return self._inner.sign(data)
