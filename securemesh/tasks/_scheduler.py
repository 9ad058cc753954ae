"""Placement as pure code: candidates, the cost model, policies, and the scheduler.

Theory of operation
-------------------
1. **Candidates** (:class:`Candidate`) are the nodes that could run a task,
   built from their ``node.report`` (:func:`candidate_from_report`): tier
   (from the certificate), capacity (parallel slots), in-flight and queued
   tasks, link RTT, energy per unit of work, carbon intensity, failure domain
   and the task types the node offers. ``speed`` (work units per second),
   ``price`` (cost per unit) and ``bandwidth_mbps`` come from the report's
   labels of those names (operators set them in ``[report.labels]``).
2. **Hard constraints** (:meth:`Scheduler.rank`), in this order, each refusal
   counted by reason: the type is offered (``no_type``); privacy -- ``edge-only``
   never on a ``cloud`` node, ``device-only`` only on an ``end`` node
   (``privacy``); not excluded by the caller, e.g. after a failure
   (``excluded``); predicted cost within the budget (``budget``); predicted
   completion within the deadline (``deadline``).
3. **Cost model** (:func:`estimate`): predicted completion time = transfer
   (RTT + bytes not held by the node / bandwidth) + queueing (work already
   waiting, spread over the free slots) + compute (work / speed); energy =
   work x energy per unit (J); carbon = energy in kWh x intensity (g); cost =
   work x price; moved = megabytes of input the node does not hold.
4. **Policies** (:class:`Policy`) score the feasible estimates, lower is
   better: small objects (latency-first, energy-, carbon-, cost-aware,
   locality, the intent-aware weighted default) that compose with
   :class:`Weighted`, and :class:`Adaptive`, which learns each node's real
   completion times from observations (a contextual bandit). The scheduler
   returns every feasible candidate, best first, so the caller retries on the
   next one after a failure.

Nothing here does I/O, reads a clock or draws randomness it was not given.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final, Protocol

import numpy as np
import numpy.typing as npt

from securemesh.errors import LocalError, RemoteError
from securemesh.tasks._model import InlineInput, ObjectRef, TaskIntent, TaskRequest

if TYPE_CHECKING:
    from securemesh.messages import NodeReport

__all__ = [
    "Adaptive",
    "AlwaysTier",
    "CarbonAware",
    "Candidate",
    "CostAware",
    "EnergyAware",
    "Estimate",
    "IntentAware",
    "LatencyFirst",
    "Locality",
    "LocalityHook",
    "NoPlacement",
    "Policy",
    "RandomPolicy",
    "RoundRobin",
    "Scheduler",
    "Weighted",
    "candidate_from_report",
    "estimate",
]

DEFAULT_SPEED: Final = 100.0  # work units per second
DEFAULT_BANDWIDTH_MBPS: Final = 100.0
_J_PER_KWH: Final = 3.6e6
TIERS: Final = ("end", "edge", "cloud")

#: ``hook(ref) -> {node id: fraction of the object's bytes that node holds}``;
#: the storage layer provides one; the default reads ``ObjectRef.holders``.
LocalityHook = Callable[[ObjectRef], Mapping[str, float]]


def holders_locality(ref: ObjectRef) -> Mapping[str, float]:
    """The default hook: each listed holder holds an equal share of the object."""
    if not ref.holders:
        return {}
    share = 1.0 / len(ref.holders)
    out: dict[str, float] = {}
    for node in ref.holders:
        out[node] = min(1.0, out.get(node, 0.0) + share)
    return out


@dataclass(frozen=True, slots=True)
class Candidate:
    """A node that might run a task, as the scheduler sees it."""

    node_id: str
    tier: str
    task_types: frozenset[str]
    capacity: int = 1
    inflight: int = 0
    queue_length: int = 0
    speed: float = DEFAULT_SPEED
    rtt_ms: float = 0.0
    bandwidth_mbps: float = DEFAULT_BANDWIDTH_MBPS
    energy_per_unit: float = 0.0
    carbon_intensity: float = 0.0
    price: float = 0.0
    failure_domain: str | None = None
    #: Known wait (s) until a slot is free (the simulation knows it; live reports
    #: give counts, from which the cost model predicts it).
    wait_s: float | None = None

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise LocalError(f"unknown tier {self.tier!r}")
        for name in ("speed", "bandwidth_mbps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise LocalError(f"candidate {self.node_id}: {name} must be > 0")


def label_float(labels: Mapping[str, str], key: str, default: float) -> float:
    try:
        value = float(labels[key])
    except (KeyError, ValueError):
        return default
    return value if math.isfinite(value) and value > 0 else default


def candidate_from_report(
    node_id: str, tier: str, report: NodeReport, task_types: Iterable[str]
) -> Candidate:
    """A candidate from a neighbour's verified ``node.report`` (module doc, step 1)."""
    labels = report.labels or {}
    return Candidate(
        node_id=node_id,
        tier=tier,
        task_types=frozenset(task_types),
        capacity=max(1, report.capacity),
        inflight=report.inflight,
        queue_length=report.queue_length,
        speed=label_float(labels, "speed", DEFAULT_SPEED),
        rtt_ms=report.rtt_ms or 0.0,
        bandwidth_mbps=label_float(labels, "bandwidth_mbps", DEFAULT_BANDWIDTH_MBPS),
        energy_per_unit=report.energy_per_unit or 0.0,
        carbon_intensity=report.carbon_intensity or 0.0,
        price=label_float(labels, "price", 0.0),
        failure_domain=report.failure_domain,
    )


@dataclass(frozen=True, slots=True)
class Estimate:
    """The cost model's prediction for one task on one candidate (module doc, step 3)."""

    candidate: Candidate
    transfer_s: float
    queue_s: float
    compute_s: float
    energy_j: float
    carbon_g: float
    cost: float
    moved_mb: float

    @property
    def time_s(self) -> float:
        return self.transfer_s + self.queue_s + self.compute_s


def object_holdings(
    request: TaskRequest, locality: LocalityHook
) -> list[tuple[int, Mapping[str, float]]]:
    """Each object input's size and which nodes hold what fraction of it."""
    out: list[tuple[int, Mapping[str, float]]] = []
    for item in request.inputs:
        if isinstance(item, ObjectRef):
            out.append((item.size, locality(item)))
        elif not isinstance(item, InlineInput):  # pragma: no cover - the union is closed
            raise LocalError("unknown input kind")
    return out


def estimate(
    request: TaskRequest,
    cand: Candidate,
    *,
    locality: LocalityHook = holders_locality,
    origin: str | None = None,
    held: Sequence[tuple[int, Mapping[str, float]]] | None = None,
) -> Estimate:
    """Predict time, energy, carbon, cost and data moved for ``request`` on ``cand``.

    ``origin``: the node holding the inline inputs (the submitter); running
    there moves none of them. ``held``: each object input's size and
    ``locality`` answer, computed once per request (:func:`object_holdings`).
    """
    moved = 0.0 if cand.node_id == origin else float(request.inline_bytes)
    for size, where in object_holdings(request, locality) if held is None else held:
        moved += size * (1.0 - min(1.0, max(0.0, where.get(cand.node_id, 0.0))))
    transfer = (0.0 if cand.node_id == origin else cand.rtt_ms / 1000.0) + (
        moved * 8 / (cand.bandwidth_mbps * 1e6)
    )
    compute = request.work / cand.speed
    if cand.wait_s is not None:
        queue = cand.wait_s
    else:  # counts only: assume the tasks ahead are like this one, spread over the slots
        ahead = cand.inflight + cand.queue_length - cand.capacity + 1
        queue = max(0, ahead) / (cand.speed * cand.capacity) * request.work
    energy = request.work * cand.energy_per_unit
    return Estimate(
        candidate=cand,
        transfer_s=transfer,
        queue_s=queue,
        compute_s=compute,
        energy_j=energy,
        carbon_g=energy / _J_PER_KWH * cand.carbon_intensity,
        cost=request.work * cand.price,
        moved_mb=moved / 1e6,
    )


# ------------------------------------------------------------------ policies


class Policy(Protocol):
    """Scores feasible estimates; lower is better. ``name`` appears in reports."""

    @property
    def name(self) -> str: ...

    def score(self, est: Estimate, intent: TaskIntent) -> float: ...


class _Objective:
    """A policy scoring one attribute of the estimate (``metric``)."""

    metric: ClassVar[str]
    name: str

    def score(self, est: Estimate, intent: TaskIntent) -> float:
        return float(getattr(est, self.metric))


@dataclass(frozen=True)
class LatencyFirst(_Objective):
    """Predicted completion time (s)."""

    metric: ClassVar[str] = "time_s"
    name: str = "latency-first"


@dataclass(frozen=True)
class EnergyAware(_Objective):
    """Predicted energy (J)."""

    metric: ClassVar[str] = "energy_j"
    name: str = "energy-aware"


@dataclass(frozen=True)
class CarbonAware(_Objective):
    """Predicted carbon (g CO2e)."""

    metric: ClassVar[str] = "carbon_g"
    name: str = "carbon-aware"


@dataclass(frozen=True)
class CostAware(_Objective):
    """Predicted cost (price units)."""

    metric: ClassVar[str] = "cost"
    name: str = "cost-aware"


@dataclass(frozen=True)
class Locality(_Objective):
    """Megabytes of input moved to the node (run near the data)."""

    metric: ClassVar[str] = "moved_mb"
    name: str = "locality"


@dataclass(frozen=True)
class Weighted:
    """A weighted sum of policies: ``Weighted(((1.0, LatencyFirst()), (0.01, EnergyAware())))``.

    An empty sum is refused as likely misuse (every node would tie).
    """

    parts: tuple[tuple[float, Policy], ...]
    name: str = "weighted"

    def __post_init__(self) -> None:
        if not self.parts:
            raise LocalError("a Weighted policy needs at least one part")
        for weight, _ in self.parts:
            if not (math.isfinite(weight) and weight >= 0):
                raise LocalError("policy weights are finite and >= 0")

    def score(self, est: Estimate, intent: TaskIntent) -> float:
        return sum(w * p.score(est, intent) for w, p in self.parts)


#: The intent-aware default's least energy weight (seconds of latency per joule) for
#: a request that weighs neither carbon nor cost: such a request (the default intent
#: weighs only time) is scored with at least this energy weight, so among the
#: placements that meet its deadline a slightly slower one that saves energy wins
#: (33 J are worth 1 s). A request that weighs carbon or cost has stated its resource
#: preference and is scored with its own weights. Chosen on the standard simulated
#: workload (bench/scheduler.py, docs/tasks.md): energy below the best baseline's on
#: every seed 1-5, fewer misses, optimality gap 0.2 %.
ENERGY_FLOOR: Final = 0.03


def energy_weight(intent: TaskIntent, floor: float = ENERGY_FLOOR) -> float:
    """The energy weight the intent-aware default scores ``intent`` with (see ENERGY_FLOOR)."""
    if intent.carbon_weight or intent.cost_weight:
        return intent.energy_weight
    return max(intent.energy_weight, floor)


@dataclass(frozen=True)
class IntentAware:
    """The default: the request's own weights over time, energy, carbon, cost, locality.

    ``time_weight`` x s + ``energy_weight`` x J + ``carbon_weight`` x g +
    ``cost_weight`` x cost + ``locality_weight`` x MB moved, where a request
    that weighs neither carbon nor cost has its energy weight raised to at
    least ``energy_floor`` (:func:`energy_weight`): near-ties in time go to
    the node that spends less energy. The deadline stays a hard constraint of
    the scheduler, so this never trades a met deadline away.
    ``CandidateTable.best`` makes the same decision with :data:`ENERGY_FLOOR`.
    """

    name: str = "intent"
    energy_floor: float = ENERGY_FLOOR

    def __post_init__(self) -> None:
        if not (math.isfinite(self.energy_floor) and self.energy_floor >= 0):
            raise LocalError("energy_floor must be finite and >= 0")

    def score(self, est: Estimate, intent: TaskIntent) -> float:
        return (
            intent.time_weight * est.time_s
            + energy_weight(intent, self.energy_floor) * est.energy_j
            + intent.carbon_weight * est.carbon_g
            + intent.cost_weight * est.cost
            + intent.locality_weight * est.moved_mb
        )


@dataclass
class RandomPolicy:
    """Baseline: a uniformly random feasible node (seeded rng)."""

    rng: random.Random = field(default_factory=lambda: random.Random(0))  # noqa: S311
    name: str = "random"

    def score(self, est: Estimate, intent: TaskIntent) -> float:
        return self.rng.random()


@dataclass
class RoundRobin:
    """Baseline: the feasible node chosen least recently first (ties by node id)."""

    name: str = "round-robin"
    _turn: int = 0
    _last: dict[str, int] = field(default_factory=dict)

    def score(self, est: Estimate, intent: TaskIntent) -> float:
        return float(self._last.get(est.candidate.node_id, -1))

    def chosen(self, est: Estimate) -> None:
        self._turn += 1
        self._last[est.candidate.node_id] = self._turn
        if len(self._last) > 100_000:  # bounded: forget the oldest
            self._last.pop(next(iter(self._last)))


@dataclass(frozen=True)
class AlwaysTier:
    """Baseline: prefer one tier (``always-cloud``, ``always-edge``, ``always-local``)."""

    tier: str = "cloud"
    name: str = "always-tier"

    def score(self, est: Estimate, intent: TaskIntent) -> float:
        return (0.0 if est.candidate.tier == self.tier else 1e9) + est.time_s * 1e-6


class Adaptive:
    """Learns each node's real completion times: a contextual bandit (LinUCB with
    disjoint models, Li, Chu, Langford and Schapire, WWW 2010, algorithm 1).

    The context of a task on a node is the cost model's own decomposition,
    ``x = (transfer_s, queue_s, compute_s, 1)``; each node has a ridge
    regression ``theta = A^-1 b`` of the observed completion time on ``x``,
    whose prior is the cost model itself (``theta = (1, 1, 1, 0)``: a node is
    believed until it is observed). The score is the intent-aware objective
    with the time replaced by the optimistic estimate ``theta.x - alpha *
    sqrt(x' A^-1 x)`` (a lower bound: time is a cost), so a node seldom tried
    is tried again. :meth:`observe` (the scheduler's caller reports each run's
    real completion time) updates ``A`` and ``b``, ``A^-1`` by Sherman-Morrison.
    Nodes are remembered up to ``max_nodes`` (the oldest forgotten).
    """

    name = "adaptive"

    def __init__(self, *, alpha: float = 0.1, prior: float = 4.0, max_nodes: int = 100_000) -> None:
        if not (math.isfinite(alpha) and alpha >= 0 and math.isfinite(prior) and prior > 0):
            raise LocalError("alpha >= 0 and prior > 0")
        self.alpha = alpha
        self.prior = prior
        self.max_nodes = max_nodes
        #: per node: (A^-1, b) of its ridge regression
        self._models: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = {}
        self.observed = 0

    @staticmethod
    def _context(est: Estimate) -> npt.NDArray[np.float64]:
        return np.array((est.transfer_s, est.queue_s, est.compute_s, 1.0))

    def _model(self, node: str) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        model = self._models.get(node)
        if model is None:
            # A = prior * I, b = prior * (1, 1, 1, 0): theta starts as the cost model
            model = (np.eye(4) / self.prior, self.prior * np.array((1.0, 1.0, 1.0, 0.0)))
        return model

    def predicted_time(self, est: Estimate) -> float:
        """The optimistic completion time of ``est`` on its node (seconds, >= 0)."""
        a_inv, b = self._model(est.candidate.node_id)
        x = self._context(est)
        mean = float(x @ (a_inv @ b))
        bonus = self.alpha * math.sqrt(max(0.0, float(x @ a_inv @ x)))
        return max(0.0, mean - bonus)

    def score(self, est: Estimate, intent: TaskIntent) -> float:
        return (
            intent.time_weight * self.predicted_time(est)
            + energy_weight(intent) * est.energy_j
            + intent.carbon_weight * est.carbon_g
            + intent.cost_weight * est.cost
            + intent.locality_weight * est.moved_mb
        )

    def observe(self, est: Estimate, actual_s: float) -> None:
        """Learn that the task ``est`` predicted took ``actual_s`` seconds there."""
        if not (math.isfinite(actual_s) and actual_s >= 0):
            return
        node = est.candidate.node_id
        a_inv, b = self._model(node)
        x = self._context(est)
        ax = a_inv @ x
        a_inv = a_inv - np.outer(ax, ax) / (1.0 + float(x @ ax))  # Sherman-Morrison
        self._models.pop(node, None)  # re-inserted last: the newest
        self._models[node] = (a_inv, b + actual_s * x)
        while len(self._models) > self.max_nodes:
            self._models.pop(next(iter(self._models)))
        self.observed += 1


# ------------------------------------------------------------------ scheduler


class NoPlacement(RemoteError):
    """No node may run the task; ``reasons`` counts why each candidate was ruled out."""

    reason = "no_placement"

    def __init__(self, message: str, reasons: Mapping[str, int]) -> None:
        super().__init__(message)
        self.reasons = dict(reasons)
        #: the refusal a submitter sees: which constraints ruled nodes out (no node names)
        self.public_detail = ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items()))
        if "deadline" in self.reasons and set(self.reasons) <= {"deadline", "excluded"}:
            self.reason = "deadline"  # type: ignore[misc]


_PRIVACY: Final[Mapping[str, frozenset[str]]] = {
    "any": frozenset(TIERS),
    "edge-only": frozenset({"end", "edge"}),
    "device-only": frozenset({"end"}),
}


def allowed_tiers(intent: TaskIntent) -> frozenset[str]:
    """The tiers a task of this intent may run on."""
    return _PRIVACY[intent.privacy]


class Scheduler:
    """Filters candidates by the hard constraints and ranks the rest by a policy."""

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        locality: LocalityHook | None = None,
        enforce_deadline: bool = True,
    ) -> None:
        self.policy: Policy = policy or IntentAware()
        self.locality: LocalityHook = locality or holders_locality
        #: False only for baselines in the simulation (a classic baseline ignores the
        #: deadline; type, privacy and budget stay hard constraints).
        self.enforce_deadline = enforce_deadline

    def rank(
        self,
        request: TaskRequest,
        candidates: Sequence[Candidate],
        *,
        remaining_s: float | None = None,
        exclude: Iterable[str] = (),
        origin: str | None = None,
    ) -> list[Estimate]:
        """Every feasible candidate's estimate, best first; NoPlacement if there is none.

        ``remaining_s``: time left to the deadline (default: the intent's whole deadline).
        """
        excluded = frozenset(exclude)
        tiers = allowed_tiers(request.intent)
        left = request.intent.deadline_s if remaining_s is None else remaining_s
        budget = request.intent.budget
        refused: Counter[str] = Counter()
        feasible: list[Estimate] = []
        held = object_holdings(request, self.locality)
        for cand in candidates:
            if request.task_type not in cand.task_types:
                refused["no_type"] += 1
                continue
            if cand.tier not in tiers:
                refused["privacy"] += 1
                continue
            if cand.node_id in excluded:
                refused["excluded"] += 1
                continue
            est = estimate(request, cand, origin=origin, held=held)
            if budget is not None and est.cost > budget:
                refused["budget"] += 1
                continue
            if self.enforce_deadline and est.time_s > left:
                refused["deadline"] += 1
                continue
            feasible.append(est)
        if not feasible:
            if not candidates:
                refused["no_candidates"] += 1
            raise NoPlacement(f"no node can run {request.task_type}", refused)
        intent = request.intent
        scored = [(self.policy.score(e, intent), e.candidate.node_id, e) for e in feasible]
        scored.sort(key=lambda t: (t[0], t[1]))
        ranked = [e for _, _, e in scored]
        chosen = getattr(self.policy, "chosen", None)  # stateful policies learn the pick
        if callable(chosen):
            chosen(ranked[0])
        return ranked
