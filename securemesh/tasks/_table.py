"""A columnar candidate table: the intent-aware decision over many nodes, vectorized.

:meth:`Scheduler.rank` builds an :class:`~securemesh.tasks.Estimate` per
candidate, which costs microseconds per node in Python. A
:class:`CandidateTable` keeps the same candidates as numpy columns (built once,
reused while the reports do not change) and :meth:`CandidateTable.best` makes
the same decision as ``Scheduler(IntentAware()).rank(...)[0]`` -- the same hard
constraints, the same cost model, the same objective (with the default energy
floor) and tie-break (lowest
score, then node id) -- in a few dozen array operations.
``tests/tasks/test_tasks_scheduler.py`` checks the two agree (hypothesis).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from securemesh.tasks._model import TaskRequest
from securemesh.tasks._scheduler import (
    Candidate,
    LocalityHook,
    NoPlacement,
    allowed_tiers,
    energy_weight,
    holders_locality,
    object_holdings,
)

__all__ = ["CandidateTable"]

_J_PER_KWH: Final = 3.6e6
#: Relative rounding allowance of the matrix product (its error is ~1e-15 relative;
#: nodes within this of the deadline or the best score are recomputed exactly).
_TOL: Final = 1e-7
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
        wait = col(-1.0 if c.wait_s is None else c.wait_s for c in cs)
        has_wait = wait >= 0
        # seconds per unit of the task's work: compute, plus queueing when only counts are known
        per_unit = 1.0 / self.speed + np.where(has_wait, 0.0, ahead / (self.speed * self.capacity))
        energy_carbon = self.energy / _J_PER_KWH * self.carbon
        self._s_per_byte = 8.0 / self.bits_per_s
        self._s_per_byte_list: list[float] = self._s_per_byte.tolist()
        self._rtt_list: list[float] = self.rtt_s.tolist()
        #: one column per node; a request's time and score are two coefficient rows
        #: times this: rtt, s/byte, s/unit, known wait, J/unit, g/unit, price
        self._columns = np.ascontiguousarray(
            np.stack(
                [
                    self.rtt_s,
                    self._s_per_byte,
                    per_unit,
                    np.where(has_wait, wait, 0.0),
                    self.energy,
                    energy_carbon,
                    self.price,
                ],
                axis=0,
            )
        )
        self._tiers = [c.tier for c in cs]
        self._tier_masks: dict[frozenset[str], npt.NDArray[np.bool_]] = {}
        self._type_masks: dict[str, npt.NDArray[np.bool_]] = {}
        self._penalties: dict[tuple[str, frozenset[str]], F64] = {}

    def __len__(self) -> int:
        return len(self.candidates)

    def _tier_mask(self, tiers: frozenset[str]) -> npt.NDArray[np.bool_]:
        mask = self._tier_masks.get(tiers)
        if mask is None:
            mask = self._tier_masks[tiers] = np.fromiter(
                (t in tiers for t in self._tiers), dtype=np.bool_, count=len(self)
            )
        return mask

    def _penalty(self, task_type: str, tiers: frozenset[str]) -> F64:
        """inf for the nodes that lack the type or whose tier the privacy level forbids,
        0 for the others (cached per type and tier set)."""
        key = (task_type, tiers)
        penalty = self._penalties.get(key)
        if penalty is None:
            if len(self._penalties) >= 1024:  # bounded: types come from requests
                self._penalties.clear()
            ok = self._type_mask(task_type) & self._tier_mask(tiers)
            penalty = np.where(ok, 0.0, np.inf)
            penalty.flags.writeable = False
            self._penalties[key] = penalty
        return penalty

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

    def _exact(
        self,
        request: TaskRequest,
        i: int,
        origin: str | None,
        held: list[tuple[int, Mapping[str, float]]],
        inline: int,
    ) -> tuple[float, float]:
        """The scalar path's (time, score) for node ``i``: :func:`estimate` and
        :meth:`IntentAware.score`, operation for operation, without the objects."""
        c = self.candidates[i]
        intent = request.intent
        work = request.work
        here = c.node_id == origin
        moved = 0.0 if here else float(inline)
        for size, where in held:
            moved += size * (1.0 - min(1.0, max(0.0, where.get(c.node_id, 0.0))))
        transfer = (0.0 if here else c.rtt_ms / 1000.0) + (moved * 8 / (c.bandwidth_mbps * 1e6))
        compute = work / c.speed
        if c.wait_s is not None:
            queue = c.wait_s
        else:
            ahead = c.inflight + c.queue_length - c.capacity + 1
            queue = max(0, ahead) / (c.speed * c.capacity) * work
        energy = work * c.energy_per_unit
        time_s = transfer + queue + compute
        score = (
            intent.time_weight * time_s
            + energy_weight(intent) * energy
            + intent.carbon_weight * (energy / _J_PER_KWH * c.carbon_intensity)
            + intent.cost_weight * (work * c.price)
            + intent.locality_weight * (moved / 1e6)
        )
        return time_s, score

    def _adjust(  # noqa: PLR0917
        self,
        time_s: F64,
        score: F64,
        objects: list[tuple[int, Mapping[str, float]]],
        origin: str | None,
        inline: int,
        tw: float,
        lw: float,
    ) -> None:
        """The few nodes whose transfer differs: the origin (no RTT, no inline bytes)
        and the objects' holders (less to move); approximately, like the rest."""
        less: dict[int, float] = {}
        if origin is not None and (i := self._index.get(origin)) is not None:
            less[i] = float(inline)
            rtt = self._rtt_list[i]
            time_s[i] -= rtt
            score[i] -= tw * rtt
        for size, where in objects:
            for node, share in where.items():
                if (i := self._index.get(node)) is not None:
                    less[i] = less.get(i, 0.0) + size * min(1.0, max(0.0, share))
        for i, fewer in less.items():
            sooner = fewer * self._s_per_byte_list[i]
            time_s[i] -= sooner
            score[i] -= tw * sooner + lw * fewer / 1e6

    def best(
        self,
        request: TaskRequest,
        *,
        remaining_s: float | None = None,
        exclude: Iterable[str] = (),
        origin: str | None = None,
        locality: LocalityHook = holders_locality,
    ) -> Candidate:
        """The node ``Scheduler(IntentAware()).rank(...)`` ranks first; NoPlacement if none.

        Time and score come from one matrix product over the columns (module doc);
        the few nodes whose transfer differs (the origin, the objects' holders) and
        every node within rounding of the deadline or of the best score are
        recomputed with the scalar cost model, so the decision is the scalar one.
        """
        intent = request.intent
        work = request.work
        exclude = tuple(exclude)
        inline = request.inline_bytes
        objects = object_holdings(request, locality)
        moved = float(inline) + float(sum(size for size, _ in objects))
        tw = intent.time_weight
        lw = intent.locality_weight
        coef = np.array(
            (
                (1.0, moved, work, 1.0, 0.0, 0.0, 0.0),
                (
                    tw,
                    tw * moved,
                    tw * work,
                    tw,
                    work * energy_weight(intent),
                    work * intent.carbon_weight,
                    work * intent.cost_weight,
                ),
            )
        )
        time_s, score = coef @ self._columns  # fresh arrays
        if lw:
            score += lw * moved / 1e6
        self._adjust(time_s, score, objects, origin, inline, tw, lw)
        left = intent.deadline_s if remaining_s is None else remaining_s
        score += self._penalty(request.task_type, allowed_tiers(intent))  # inf: refused
        np.putmask(score, time_s > left + _TOL * (abs(left) + 1.0), np.inf)
        if intent.budget is not None:
            np.putmask(score, work * self.price > intent.budget, np.inf)  # the scalar product
        for node in exclude:
            if (i := self._index.get(node)) is not None:
                score[i] = np.inf
        while True:
            low = float(score[score.argmin()]) if len(score) else np.inf  # argmin: faster
            if low == np.inf:
                # the slow path counts the reasons exactly as the scheduler reports them
                from securemesh.tasks._scheduler import Scheduler  # noqa: PLC0415

                Scheduler(locality=locality).rank(
                    request,
                    self.candidates,
                    remaining_s=remaining_s,
                    exclude=exclude,
                    origin=origin,
                )
                raise NoPlacement("no node", {})  # pragma: no cover - rank raised
            # every node within rounding of the best: decided by the scalar arithmetic
            found: list[tuple[float, int]] = []
            for i in np.flatnonzero(score <= low + _TOL * (abs(low) + 1.0)).tolist():
                t, sc = self._exact(request, i, origin, objects, inline)
                if t <= left:
                    found.append((sc, i))  # ascending index: node-id order breaks ties
                else:
                    score[i] = np.inf  # within rounding of the deadline, and past it
            if found:
                return self.candidates[min(found)[1]]
