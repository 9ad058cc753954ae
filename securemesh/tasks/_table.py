"""A columnar candidate table: the intent-aware decision over many nodes, vectorized.

:meth:`Scheduler.rank` builds an :class:`~securemesh.tasks.Estimate` per
candidate, which costs microseconds per node in Python. A
:class:`CandidateTable` keeps the same candidates as numpy columns (built once,
reused while the reports do not change) and :meth:`CandidateTable.best` makes
the same decision as ``Scheduler(IntentAware()).rank(...)[0]`` -- the same hard
constraints, the same cost model, the same objective and tie-break (lowest
score, then node id) -- in a few dozen array operations.
``tests/tasks/test_tasks_scheduler.py`` checks the two agree (hypothesis).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from securemesh.tasks._model import TaskRequest
from securemesh.tasks._scheduler import (
    Candidate,
    LocalityHook,
    NoPlacement,
    allowed_tiers,
    holders_locality,
    object_holdings,
)

__all__ = ["CandidateTable"]

_J_PER_KWH: Final = 3.6e6
F64 = npt.NDArray[np.float64]


class CandidateTable:
    """The candidates as columns; :meth:`best` is the intent-aware choice."""

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.candidates = list(candidates)
        # node-id order is the tie-break: sort once, then argmin finds the first
        self.candidates.sort(key=lambda c: c.node_id)
        cs = self.candidates
        self.ids = [c.node_id for c in cs]
        self._index = {n: i for i, n in enumerate(self.ids)}

        def col(values: Iterable[float]) -> F64:
            return np.fromiter(values, dtype=np.float64, count=len(cs))

        self.speed = col(c.speed for c in cs)
        self.capacity = col(c.capacity for c in cs)
        self.rtt_s = col(c.rtt_ms / 1000.0 for c in cs)
        self.bits_per_s = col(c.bandwidth_mbps * 1e6 for c in cs)
        self.energy = col(c.energy_per_unit for c in cs)
        self.carbon = col(c.carbon_intensity for c in cs)
        self.price = col(c.price for c in cs)
        ahead = np.maximum(col(c.inflight + c.queue_length - c.capacity + 1 for c in cs), 0.0)
        #: queueing seconds per unit of the task's work (the scalar model's own order)
        self.ahead_per_unit = ahead / (self.speed * self.capacity)
        self.wait = col(-1.0 if c.wait_s is None else c.wait_s for c in cs)
        self.has_wait = self.wait >= 0
        self.any_wait = bool(self.has_wait.any())
        self._tiers = [c.tier for c in cs]
        self._tier_masks: dict[frozenset[str], npt.NDArray[np.bool_]] = {}
        self._type_masks: dict[str, npt.NDArray[np.bool_]] = {}

    def __len__(self) -> int:
        return len(self.candidates)

    def _tier_mask(self, tiers: frozenset[str]) -> npt.NDArray[np.bool_]:
        mask = self._tier_masks.get(tiers)
        if mask is None:
            mask = self._tier_masks[tiers] = np.fromiter(
                (t in tiers for t in self._tiers), dtype=np.bool_, count=len(self)
            )
        return mask

    def _type_mask(self, task_type: str) -> npt.NDArray[np.bool_]:
        mask = self._type_masks.get(task_type)
        if mask is None:
            if len(self._type_masks) >= 1024:  # bounded: types come from requests
                self._type_masks.clear()
            mask = self._type_masks[task_type] = np.fromiter(
                (task_type in c.task_types for c in self.candidates),
                dtype=np.bool_,
                count=len(self),
            )
        return mask

    def _transfer(
        self, request: TaskRequest, origin: str | None, locality: LocalityHook
    ) -> tuple[F64, F64 | None]:
        """Seconds to move the inputs to each node, and the bytes moved (None: none)."""
        objects = object_holdings(request, locality)
        local = self._index.get(origin) if origin is not None else None
        rtt = self.rtt_s
        if local is not None:
            rtt = rtt.copy()
            rtt[local] = 0.0
        if not objects and not request.inline_bytes:
            return rtt, None
        n = len(self)
        moved = np.full(n, float(request.inline_bytes))
        if local is not None:
            moved[local] = 0.0
        for size, where in objects:
            held = np.zeros(n)
            for node, share in where.items():
                i = self._index.get(node)
                if i is not None:
                    held[i] = min(1.0, max(0.0, share))
            moved += size * (1.0 - held)  # the scalar model's own arithmetic, term by term
        return rtt + moved * 8.0 / self.bits_per_s, moved

    def best(
        self,
        request: TaskRequest,
        *,
        remaining_s: float | None = None,
        exclude: Iterable[str] = (),
        origin: str | None = None,
        locality: LocalityHook = holders_locality,
    ) -> Candidate:
        """The node ``Scheduler(IntentAware()).rank(...)`` ranks first; NoPlacement if none."""
        intent = request.intent
        work = request.work
        exclude = tuple(exclude)
        ok = self._type_mask(request.task_type) & self._tier_mask(allowed_tiers(intent))
        for node in exclude:
            i = self._index.get(node)
            if i is not None:
                ok[i] = False  # `ok` is a fresh array (the & above)
        transfer, moved = self._transfer(request, origin, locality)
        compute = work / self.speed
        queue = self.ahead_per_unit * work
        if self.any_wait:
            queue = np.where(self.has_wait, self.wait, queue)
        time_s = transfer + queue + compute
        cost = work * self.price if intent.budget is not None or intent.cost_weight else None
        if intent.budget is not None and cost is not None:
            ok &= cost <= intent.budget
        left = intent.deadline_s if remaining_s is None else remaining_s
        ok &= time_s <= left
        if not ok.any():
            # the slow path counts the reasons exactly as the scheduler reports them
            from securemesh.tasks._scheduler import Scheduler  # noqa: PLC0415

            Scheduler(locality=locality).rank(
                request, self.candidates, remaining_s=remaining_s, exclude=exclude, origin=origin
            )
            raise NoPlacement("no node", {})  # pragma: no cover - rank raised
        score = intent.time_weight * time_s
        energy = work * self.energy
        if intent.energy_weight:
            score += intent.energy_weight * energy
        if intent.carbon_weight:
            score += intent.carbon_weight * (energy / _J_PER_KWH * self.carbon)
        if intent.cost_weight and cost is not None:
            score += intent.cost_weight * cost
        if intent.locality_weight and moved is not None:
            score += intent.locality_weight * (moved / 1e6)
        score = np.where(ok, score, np.inf)
        return self.candidates[int(np.argmin(score))]
