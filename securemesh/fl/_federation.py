"""A federation run in one process: selection, local training, aggregation, audit.

Each round (McMahan et al. 2017, Algorithm 1; Li et al. 2020 for FedProx):

1. select ``clients_per_round`` clients at random (a seeded generator: the
   selection is not secret, and a seed makes experiments repeatable);
2. each trains locally from the global parameters (:func:`train_local`) and,
   with client-level DP, clips its update and adds its share of the noise;
3. the aggregation mode (``plain``, ``secagg``, or a registered one such as
   ``he``) returns the weighted mean over the clients that stayed;
4. the global model moves by ``server_lr`` times that mean, and one audit
   event ``fl.round_finished`` records the round number, the participants, the
   survivors and the SHA-256 of the new global parameters (float64,
   little-endian). Exclusions (bad shares, forged signatures) are audited as
   ``fl.client_excluded``, aborted rounds as ``fl.round_aborted``.

``audit`` is any ``(kind, details)`` callable: the FL service passes its
node's audit recorder, tests a list's ``append``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from securemesh.errors import ConfigError
from securemesh.fl._aggregate import Aggregator, ClientUpdate, PlainAggregator
from securemesh.fl._dp import ClientDP, round_noise_ok
from securemesh.fl._models import FloatArray, IntArray, Model
from securemesh.fl._secagg import RoundAborted
from securemesh.fl._train import LocalTraining, train_local

__all__ = ["AUDIT_KINDS", "Federation", "RoundRecord", "id_list", "model_hash", "round_details"]

AUDIT_KINDS = ("fl.round_started", "fl.round_finished", "fl.round_aborted", "fl.client_excluded")
_MAX_DETAIL = 1024  # securemesh.audit.events.MAX_DETAIL_STR_LENGTH
AuditFn = Callable[[str, dict[str, object]], None]
DropoutFn = Callable[[int, tuple[str, ...]], Mapping[str, str]]


def model_hash(params: FloatArray) -> str:
    """SHA-256 (hex) of the parameters as little-endian float64."""
    return hashlib.sha256(np.asarray(params, dtype="<f8").tobytes()).hexdigest()


def id_list(ids: Sequence[str]) -> str:
    """Node ids for an audit detail: comma-joined, or ``sha256:<hex>`` of that when too long."""
    joined = ",".join(ids)
    if len(joined) <= _MAX_DETAIL:
        return joined
    return "sha256:" + hashlib.sha256(joined.encode()).hexdigest()


def round_details(
    round_no: int,
    mode: str,
    participants: Sequence[str],
    survivors: Sequence[str],
    digest: str,
) -> dict[str, object]:
    """The flat details of an ``fl.round_finished`` audit event (audit details are scalars)."""
    gone = [c for c in participants if c not in set(survivors)]
    return {
        "round": round_no,
        "mode": mode,
        "model_hash": digest,
        "participants_n": len(participants),
        "survivors_n": len(survivors),
        "participants": id_list(participants),
        "survivors": id_list(survivors),
        "dropped": id_list(gone),
    }


@dataclass(frozen=True)
class RoundRecord:
    round: int
    participants: tuple[str, ...]
    survivors: tuple[str, ...]
    model_hash: str
    accuracy: float | None = None
    epsilon: float | None = None
    aborted: str | None = None


@dataclass
class Federation:
    model: Model
    data: Mapping[str, tuple[FloatArray, IntArray]]
    local: LocalTraining = field(default_factory=LocalTraining)
    clients_per_round: int = 10
    aggregator: Aggregator = field(default_factory=PlainAggregator)
    dp: ClientDP | None = None
    server_lr: float = 1.0
    seed: int = 0
    audit: AuditFn | None = None
    evaluate: tuple[FloatArray, IntArray] | None = None
    dropouts: DropoutFn | None = None
    params: FloatArray = field(init=False)
    history: list[RoundRecord] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.clients_per_round <= len(self.data):
            raise ConfigError("clients_per_round must be in 1..number of clients")
        self._select = random.Random(self.seed)  # noqa: S311 - selection is public, repeatable
        self._rng = np.random.default_rng(self.seed)  # batch order and DP noise
        self.params = self.model.init(np.random.default_rng(self.seed))
        self._dp_rounds = 0

    def accuracy(self) -> float | None:
        if self.evaluate is None:
            return None
        x, y = self.evaluate
        return float((self.model.predict(self.params, x) == y).mean())

    def _record(self, kind: str, details: dict[str, object]) -> None:
        if self.audit is not None:
            self.audit(kind, details)

    def run(self, rounds: int) -> list[RoundRecord]:
        for _ in range(rounds):
            self.run_round()
        return self.history

    def run_round(self) -> RoundRecord:
        r = len(self.history) + 1
        chosen = tuple(sorted(self._select.sample(sorted(self.data), self.clients_per_round)))
        updates = {}
        for c in chosen:
            x, y = self.data[c]
            delta = train_local(self.model, self.params, x, y, self.local, rng=self._rng)
            if self.dp is not None:
                delta = self.dp.privatize(delta, len(chosen), self._rng)
                updates[c] = ClientUpdate(delta, 1)
            else:
                updates[c] = ClientUpdate(delta, len(y))
        drops = dict(self.dropouts(r, chosen)) if self.dropouts else {}
        try:
            agg = self.aggregator.aggregate(r, updates, drops)
        except RoundAborted as exc:
            rec = RoundRecord(
                r, chosen, (), model_hash(self.params), self.accuracy(), None, str(exc)
            )
            self._record(
                "fl.round_aborted",
                {"round": r, "participants": id_list(chosen), "reason": str(exc)[:_MAX_DETAIL]},
            )
            self.history.append(rec)
            return rec
        for ex in agg.exclusions:
            self._record(
                "fl.client_excluded",
                {
                    "round": r,
                    "client": ex.client,
                    "stage": ex.stage,
                    "reason": ex.reason[:_MAX_DETAIL],
                    "accuser": ex.accuser,
                },
            )
        mean = agg.mean
        epsilon = None
        if self.dp is not None:
            if not round_noise_ok(len(agg.survivors), len(chosen)):
                reason = f"only {len(agg.survivors)} of {len(chosen)} noise shares arrived"
                rec = RoundRecord(
                    r, chosen, agg.survivors, model_hash(self.params), self.accuracy(), None, reason
                )
                self._record(
                    "fl.round_aborted",
                    {"round": r, "participants": id_list(chosen), "reason": reason},
                )
                self.history.append(rec)
                return rec
            mean = mean * agg.total_weight / len(chosen)  # fixed denominator (DP-FedAvg)
            self._dp_rounds += 1
            epsilon = self.dp.epsilon(self._dp_rounds)
        self.params = self.params + self.server_lr * mean
        digest = model_hash(self.params)
        rec = RoundRecord(r, chosen, agg.survivors, digest, self.accuracy(), epsilon)
        details = round_details(r, self.aggregator.name, chosen, agg.survivors, digest)
        if epsilon is not None:
            details["epsilon"] = round(epsilon, 4)
            details["delta"] = self.dp.delta if self.dp else None
        self._record("fl.round_finished", details)
        self.history.append(rec)
        return rec
