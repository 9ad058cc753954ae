"""A deterministic simulation that compares placement policies on one generated workload.

Theory of operation
-------------------
:func:`generate` draws, from a seeded :class:`random.Random`, a heterogeneous
mesh (end devices: slow, battery-powered, on the submitter; edges: near,
moderate; cloud: fast, cheap energy per unit but far and priced) and a
workload: Poisson arrivals at each device, a mix of intents (``any``,
``edge-only``, ``device-only``; latency-, energy- and carbon-leaning weights;
some budgets), deadlines and work sizes.

:func:`simulate` replays the workload through the *real*
:class:`~securemesh.tasks.Scheduler` with each policy: at each arrival the
candidates carry the exact wait until a slot is free on each node (list
scheduling, FIFO per node, ``capacity`` slots); the chosen node runs the task
for ``work / speed`` seconds after the transfer. A task the scheduler refuses
(no feasible node) counts as a deadline miss and runs nowhere. Per policy it
reports mean and p95 latency, the deadline-miss rate, energy (J), carbon (g)
and cost. Same seed, same numbers.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from securemesh.errors import LocalError
from securemesh.tasks._model import MAX_INLINE_BYTES, InlineInput, TaskIntent, TaskRequest
from securemesh.tasks._scheduler import (
    Adaptive,
    AlwaysTier,
    Candidate,
    Estimate,
    IntentAware,
    LatencyFirst,
    NoPlacement,
    Policy,
    RandomPolicy,
    RoundRobin,
    Scheduler,
    allowed_tiers,
    estimate,
)

__all__ = [
    "CONSTRAINED",
    "SimResult",
    "SimTask",
    "Workload",
    "baseline_policies",
    "chart",
    "compare",
    "generate",
    "objective",
    "optimality_gap",
    "optimum",
    "policy_runs",
    "simulate",
]

SIM_TYPE = "sim.work"
#: The standard workload's arrivals per second per 8 devices (edges near saturation).
RATE = 40.0
#: The standard workload's share of tasks that carry an input from the device.
DATA_SHARE = 0.5
#: The median size (MB) of an interactive task's input.
INPUT_MB = 1.5
#: A carbon-leaning intent's weight: seconds of latency one gram of CO2e is worth.
CARBON_WEIGHT = 200.0


@dataclass(frozen=True, slots=True)
class SimTask:
    arrival_s: float
    origin: str
    request: TaskRequest


@dataclass(frozen=True, slots=True)
class Workload:
    nodes: tuple[Candidate, ...]
    tasks: tuple[SimTask, ...]
    #: node -> actual compute time / the reported speed's prediction (1: honest)
    slowdown: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SimResult:
    policy: str
    tasks: int
    mean_latency_s: float
    p95_latency_s: float
    miss_rate: float
    refused: int
    energy_j: float
    carbon_g: float
    cost: float
    #: nodes per tier that ran tasks
    placed: Mapping[str, int]

    def row(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "tasks": self.tasks,
            "mean_latency_s": round(self.mean_latency_s, 4),
            "p95_latency_s": round(self.p95_latency_s, 4),
            "miss_rate": round(self.miss_rate, 4),
            "refused": self.refused,
            "energy_j": round(self.energy_j, 1),
            "carbon_g": round(self.carbon_g, 3),
            "cost": round(self.cost, 2),
            "placed": dict(self.placed),
        }


@dataclass(frozen=True, slots=True)
class _TierSpec:
    """Ranges the generated nodes of one tier are drawn from."""

    capacity: tuple[int, ...]
    speed: tuple[float, float]  # work units / s
    rtt_ms: tuple[float, float]  # to the scheduler
    bandwidth_mbps: float
    energy: tuple[float, float]  # J / unit: battery devices worst, the cloud best
    carbon: tuple[float, float]  # gCO2e / kWh
    price: float  # per unit


_DEVICE = _TierSpec((1,), (5, 15), (0, 0), 20.0, (2.0, 4.0), (300, 500), 0.0)
_EDGE = _TierSpec((2, 4), (40, 80), (2, 8), 200.0, (0.8, 1.5), (200, 450), 0.01)
_CLOUD = _TierSpec((16,), (150, 250), (40, 80), 50.0, (0.3, 0.6), (50, 150), 0.05)


def generate(
    seed: int,
    *,
    devices: int = 8,
    edges: int = 3,
    clouds: int = 1,
    tasks: int = 400,
    rate: float = RATE,
    data: float = DATA_SHARE,
    misreport: float = 0.0,
) -> Workload:
    """A mesh and a workload from ``seed`` (module doc).

    ``rate``: arrivals per second per 8 devices. ``data``: the share of tasks
    that carry an inline input from the submitting device (a camera frame, a
    sensor window: lognormal around 1 MB, at most 4 MiB), drawn from a stream of
    its own so that ``data=0`` gives the same tasks without inputs.
    ``misreport``: each node's real compute time is its reported speed's
    prediction times ``exp(U(-misreport, misreport))`` (stale or optimistic
    labels; a stream of its own), which only an adaptive policy can learn.
    """
    if not (math.isfinite(rate) and rate > 0 and 0.0 <= data <= 1.0):
        raise LocalError("rate must be > 0 and data in [0, 1]")
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not secrets
    drng = random.Random(f"{seed}/data")  # noqa: S311
    types = frozenset({SIM_TYPE})
    nodes: list[Candidate] = []
    for prefix, tier, count, spec in (
        ("dev", "end", devices, _DEVICE),
        ("edge", "edge", edges, _EDGE),
        ("cloud", "cloud", clouds, _CLOUD),
    ):
        for i in range(count):
            nodes.append(
                Candidate(
                    f"{prefix}-{i}",
                    tier,
                    types,
                    capacity=rng.choice(spec.capacity),
                    speed=rng.uniform(*spec.speed),
                    rtt_ms=rng.uniform(*spec.rtt_ms),
                    bandwidth_mbps=spec.bandwidth_mbps,
                    energy_per_unit=rng.uniform(*spec.energy),
                    carbon_intensity=rng.uniform(*spec.carbon),
                    price=spec.price,
                )
            )
    out: list[SimTask] = []
    t = 0.0
    rate = rate * max(1, devices) / 8  # arrivals per second across the devices
    for n in range(tasks):
        t += rng.expovariate(rate)
        privacy = rng.choices(("any", "edge-only", "device-only"), weights=(6, 3, 1))[0]
        lean = rng.choice(("time", "energy", "carbon"))
        work = rng.lognormvariate(math.log(20), 0.6)
        deadline = rng.uniform(0.5, 4.0) if privacy != "device-only" else 30.0
        budget = rng.choice((None, None, 2.0))
        inputs: list[InlineInput] = []
        if drng.random() < data:  # interactive: a frame from the device, a tight deadline
            size = min(MAX_INLINE_BYTES, int(drng.lognormvariate(math.log(INPUT_MB * 1e6), 0.6)))
            inputs.append(
                InlineInput(frame=0, size=size, sha256="00" * 32)
            )  # not hashed: simulated
            work = drng.lognormvariate(math.log(10), 0.5)
            if privacy != "device-only":
                deadline = drng.uniform(0.3, 1.0)
        intent = TaskIntent(
            deadline_s=deadline,
            budget=budget,
            privacy=privacy,  # type: ignore[arg-type]
            time_weight=1.0,
            energy_weight=0.02 if lean == "energy" else 0.0,
            carbon_weight=CARBON_WEIGHT if lean == "carbon" else 0.0,
        )
        request = TaskRequest(
            task_id=f"{n:032x}",
            task_type=SIM_TYPE,
            intent=intent,
            work=min(work, 400.0),
            inputs=inputs,  # type: ignore[arg-type]
        )
        out.append(SimTask(t, f"dev-{rng.randrange(devices)}", request))
    srng = random.Random(f"{seed}/speed")  # noqa: S311
    slowdown = {n.node_id: math.exp(srng.uniform(-misreport, misreport)) for n in nodes}
    return Workload(tuple(nodes), tuple(out), slowdown if misreport else {})


def baseline_policies(seed: int = 0) -> list[Policy]:
    """The intent-aware default, latency-first, the adaptive policy and the baselines,
    in report order (a fresh, untrained adaptive policy each time)."""
    return [
        IntentAware(),
        LatencyFirst(),
        Adaptive(),
        RandomPolicy(random.Random(seed)),  # noqa: S311 - a reproducible baseline
        RoundRobin(),
        AlwaysTier("cloud", name="always-cloud"),
        AlwaysTier("edge", name="always-edge"),
        AlwaysTier("end", name="always-local"),
    ]


#: Policies that use the scheduler's deadline constraint; the classic baselines do not.
CONSTRAINED: frozenset[str] = frozenset({"intent", "latency-first", "adaptive"})


#: The objective's price of one missed or refused deadline (in the intent's units:
#: seconds of latency at time weight 1).
MISS_PENALTY = 100.0

Choose = Callable[[SimTask, list[Candidate]], "Estimate | None"]


@dataclass(frozen=True, slots=True)
class _Run:
    """One task's fate in a replay: where it ran (None: refused) and when it finished."""

    estimate: Estimate | None
    latency_s: float


def _candidates(
    workload: Workload, task: SimTask, slots: dict[str, list[float]]
) -> list[Candidate]:
    """The nodes a task may use at its arrival, with their exact wait for a slot.

    A device only runs its own tasks: other devices are not candidates.
    """
    now = task.arrival_s
    return [
        replace(n, wait_s=max(0.0, slots[n.node_id][0] - now))
        for n in workload.nodes
        if n.tier != "end" or n.node_id == task.origin
    ]


def _replay(
    workload: Workload, choose: Choose, observe: Callable[[Estimate, float], None] | None = None
) -> list[_Run]:
    """Replay the arrivals; ``choose`` places each (list scheduling, FIFO per node).

    ``observe(estimate, latency)`` learns each run's real completion time (told
    at once: the simulation does not model the delay of the feedback).
    """
    slots: dict[str, list[float]] = {n.node_id: [0.0] * n.capacity for n in workload.nodes}
    runs: list[_Run] = []
    for task in workload.tasks:
        best = choose(task, _candidates(workload, task, slots))
        if best is None:
            runs.append(_Run(None, math.inf))
            continue
        node = best.candidate.node_id
        heap = slots[node]
        free = heapq.heappop(heap)
        compute = best.compute_s * workload.slowdown.get(node, 1.0)
        finish = max(task.arrival_s + best.transfer_s, free) + compute
        heapq.heappush(heap, finish)
        runs.append(_Run(best, finish - task.arrival_s))
        if observe is not None:
            observe(best, finish - task.arrival_s)
    return runs


def objective(workload: Workload, runs: Sequence[_Run]) -> float:
    """Sum over tasks of the intent's weighted cost of what happened, plus
    :data:`MISS_PENALTY` per missed or refused deadline: what the optimum minimizes."""
    total = 0.0
    for task, run in zip(workload.tasks, runs, strict=True):
        intent = task.request.intent
        est = run.estimate
        if est is None:
            total += MISS_PENALTY
            continue
        total += (
            intent.time_weight * run.latency_s
            + intent.energy_weight * est.energy_j
            + intent.carbon_weight * est.carbon_g
            + intent.cost_weight * est.cost
            + intent.locality_weight * est.moved_mb
        )
        if run.latency_s > intent.deadline_s:
            total += MISS_PENALTY
    return total


def policy_runs(
    workload: Workload, policy: Policy, *, constrained: bool | None = None
) -> list[_Run]:
    """The replay of ``workload`` with ``policy`` (see :func:`simulate`)."""
    if constrained is None:
        constrained = policy.name in CONSTRAINED
    scheduler = Scheduler(policy, enforce_deadline=constrained)

    def choose(task: SimTask, candidates: list[Candidate]) -> Estimate | None:
        try:
            return scheduler.rank(task.request, candidates, origin=task.origin)[0]
        except NoPlacement:
            return None

    return _replay(workload, choose, getattr(policy, "observe", None))


def simulate(workload: Workload, policy: Policy, *, constrained: bool | None = None) -> SimResult:
    """Run ``workload`` with ``policy`` (module doc); deterministic.

    ``constrained``: refuse placements predicted to miss the deadline (default:
    for the policies in :data:`CONSTRAINED`); type, privacy and budget always hold.
    """
    runs = policy_runs(workload, policy, constrained=constrained)
    ran = [r for r in runs if r.estimate is not None]
    ordered = sorted(r.latency_s for r in ran)
    n = len(workload.tasks)
    misses = sum(
        1
        for t, r in zip(workload.tasks, runs, strict=True)
        if r.latency_s > t.request.intent.deadline_s
    )
    placed: dict[str, int] = {}
    for r in ran:
        assert r.estimate is not None
        tier = r.estimate.candidate.tier
        placed[tier] = placed.get(tier, 0) + 1
    return SimResult(
        policy=policy.name,
        tasks=n,
        mean_latency_s=sum(ordered) / len(ordered) if ordered else 0.0,
        p95_latency_s=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0.0,
        miss_rate=misses / n if n else 0.0,
        refused=n - len(ran),
        energy_j=sum(r.estimate.energy_j for r in ran if r.estimate is not None),
        carbon_g=sum(r.estimate.carbon_g for r in ran if r.estimate is not None),
        cost=sum(r.estimate.cost for r in ran if r.estimate is not None),
        placed=placed,
    )


#: At most this many assignments are searched by :func:`optimum`.
MAX_SEARCH = 200_000


def _follow(assignment: Sequence[str | None]) -> Choose:
    """A chooser that places the tasks, in order, where ``assignment`` says."""
    plan = iter(assignment)

    def choose(task: SimTask, candidates: list[Candidate]) -> Estimate | None:
        node = next(plan)
        if node is None:
            return None
        cand = next(c for c in candidates if c.node_id == node)
        return estimate(task.request, cand, origin=task.origin)

    return choose


def optimum(workload: Workload) -> float:
    """The least :func:`objective` over every assignment of tasks to allowed nodes
    (or refusal), by exhaustive search (small instances only: LocalError beyond
    :data:`MAX_SEARCH` assignments). Privacy, type and budget hold as in the scheduler."""
    choices: list[list[str | None]] = []
    for task in workload.tasks:
        allowed = [
            c.node_id
            for c in _candidates(workload, task, {n.node_id: [0.0] for n in workload.nodes})
            if c.tier in allowed_tiers(task.request.intent)
            and task.request.task_type in c.task_types
            and (
                task.request.intent.budget is None
                or task.request.work * c.price <= task.request.intent.budget
            )
        ]
        choices.append([*allowed, None])
    if math.prod(len(c) for c in choices) > MAX_SEARCH:
        raise LocalError(f"more than {MAX_SEARCH} assignments: too large to search")
    best = math.inf
    for assignment in itertools.product(*choices):
        best = min(best, objective(workload, _replay(workload, _follow(assignment))))
    return best


def optimality_gap(seeds: Sequence[int], policy: Policy | None = None, **sizes: int) -> float:
    """Mean of (policy's objective - optimum) / optimum over small generated instances."""
    sizes = {"devices": 2, "edges": 2, "clouds": 1, "tasks": 6, **sizes}
    gaps = []
    for seed in seeds:
        workload = generate(seed, **sizes)
        best = optimum(workload)
        got = objective(workload, policy_runs(workload, policy or IntentAware()))
        gaps.append((got - best) / best if best > 0 else 0.0)
    return sum(gaps) / len(gaps)


def compare(
    seed: int, policies: Sequence[Policy] | None = None, **workload_options: Any
) -> list[SimResult]:
    """Every policy on the same generated workload (``workload_options``: :func:`generate`'s)."""
    workload = generate(seed, **workload_options)
    return [simulate(workload, p) for p in (policies or baseline_policies(seed))]


def chart(results: Sequence[SimResult], path: str, *, title: str = "") -> None:
    """Write a PNG of ``results`` (one bar per policy: deadline-miss rate, mean and
    p95 latency, energy) to ``path``. matplotlib is imported here, with the Agg
    backend (no display), so the rest of the module does not pay for it."""
    import matplotlib  # noqa: PLC0415 - heavy, only for the chart

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = [r.policy for r in results]
    panels = (
        ("deadline-miss rate", [r.miss_rate for r in results]),
        ("latency (s): mean, p95", [r.mean_latency_s for r in results]),
        ("energy (kJ)", [r.energy_j / 1000 for r in results]),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    for ax, (label, values) in zip(axes, panels, strict=True):
        colors = ["tab:green" if n in CONSTRAINED else "tab:gray" for n in names]
        ax.bar(names, values, color=colors)
        if label.startswith("latency"):
            ax.scatter(names, [r.p95_latency_s for r in results], color="black", marker="_", s=200)
            ax.set_yscale("log")
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=45)
    if title:
        fig.suptitle(title)
    try:
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
