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
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from securemesh.tasks._model import TaskIntent, TaskRequest
from securemesh.tasks._scheduler import (
    AlwaysTier,
    Candidate,
    IntentAware,
    LatencyFirst,
    NoPlacement,
    Policy,
    RandomPolicy,
    RoundRobin,
    Scheduler,
)

__all__ = [
    "CONSTRAINED",
    "SimResult",
    "SimTask",
    "Workload",
    "baseline_policies",
    "compare",
    "generate",
    "simulate",
]

SIM_TYPE = "sim.work"


@dataclass(frozen=True, slots=True)
class SimTask:
    arrival_s: float
    origin: str
    request: TaskRequest


@dataclass(frozen=True, slots=True)
class Workload:
    nodes: tuple[Candidate, ...]
    tasks: tuple[SimTask, ...]


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


def generate(
    seed: int, *, devices: int = 8, edges: int = 3, clouds: int = 1, tasks: int = 400
) -> Workload:
    """A mesh and a workload from ``seed`` (module doc)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not secrets
    types = frozenset({SIM_TYPE})
    nodes: list[Candidate] = []
    for i in range(devices):
        nodes.append(
            Candidate(
                f"dev-{i}",
                "end",
                types,
                capacity=1,
                speed=rng.uniform(5, 15),
                rtt_ms=0.0,
                bandwidth_mbps=20.0,
                energy_per_unit=rng.uniform(2.0, 4.0),
                carbon_intensity=rng.uniform(300, 500),
                price=0.0,
            )
        )
    for i in range(edges):
        nodes.append(
            Candidate(
                f"edge-{i}",
                "edge",
                types,
                capacity=rng.choice((2, 4)),
                speed=rng.uniform(40, 80),
                rtt_ms=rng.uniform(2, 8),
                bandwidth_mbps=200.0,
                energy_per_unit=rng.uniform(0.8, 1.5),
                carbon_intensity=rng.uniform(200, 450),
                price=0.01,
            )
        )
    for i in range(clouds):
        nodes.append(
            Candidate(
                f"cloud-{i}",
                "cloud",
                types,
                capacity=16,
                speed=rng.uniform(150, 250),
                rtt_ms=rng.uniform(40, 80),
                bandwidth_mbps=50.0,
                energy_per_unit=rng.uniform(0.3, 0.6),
                carbon_intensity=rng.uniform(50, 150),
                price=0.05,
            )
        )
    out: list[SimTask] = []
    t = 0.0
    rate = 10.0 * max(1, devices) / 8  # arrivals per second across the devices
    for n in range(tasks):
        t += rng.expovariate(rate)
        privacy = rng.choices(("any", "edge-only", "device-only"), weights=(6, 3, 1))[0]
        lean = rng.choice(("time", "energy", "carbon"))
        work = rng.lognormvariate(math.log(20), 0.6)
        intent = TaskIntent(
            deadline_s=rng.uniform(0.5, 4.0) if privacy != "device-only" else 30.0,
            budget=rng.choice((None, None, 2.0)),
            privacy=privacy,  # type: ignore[arg-type]
            time_weight=1.0,
            energy_weight=0.02 if lean == "energy" else 0.0,
            carbon_weight=0.5 if lean == "carbon" else 0.0,
        )
        request = TaskRequest(
            task_id=f"{n:032x}", task_type=SIM_TYPE, intent=intent, work=min(work, 400.0)
        )
        out.append(SimTask(t, f"dev-{rng.randrange(devices)}", request))
    return Workload(tuple(nodes), tuple(out))


def baseline_policies(seed: int = 0) -> list[Policy]:
    """The intent-aware default, latency-first and the baselines, in report order."""
    return [
        IntentAware(),
        LatencyFirst(),
        RandomPolicy(random.Random(seed)),  # noqa: S311 - a reproducible baseline
        RoundRobin(),
        AlwaysTier("cloud", name="always-cloud"),
        AlwaysTier("edge", name="always-edge"),
        AlwaysTier("end", name="always-local"),
    ]


#: Policies that use the scheduler's deadline constraint; the classic baselines do not.
CONSTRAINED: frozenset[str] = frozenset({"intent", "latency-first"})


def simulate(workload: Workload, policy: Policy, *, constrained: bool | None = None) -> SimResult:
    """Run ``workload`` with ``policy`` (module doc); deterministic.

    ``constrained``: refuse placements predicted to miss the deadline (default:
    for the policies in :data:`CONSTRAINED`); type, privacy and budget always hold.
    """
    if constrained is None:
        constrained = policy.name in CONSTRAINED
    scheduler = Scheduler(policy, enforce_deadline=constrained)
    slots: dict[str, list[float]] = {n.node_id: [0.0] * n.capacity for n in workload.nodes}
    for heap in slots.values():
        heapq.heapify(heap)
    latencies: list[float] = []
    misses = refused = 0
    energy = carbon = cost = 0.0
    placed: dict[str, int] = {}
    for task in workload.tasks:
        now = task.arrival_s
        # a device only runs its own tasks: other devices are not candidates
        candidates = [
            replace(n, wait_s=max(0.0, slots[n.node_id][0] - now))
            for n in workload.nodes
            if n.tier != "end" or n.node_id == task.origin
        ]
        try:
            best = scheduler.rank(task.request, candidates, origin=task.origin)[0]
        except NoPlacement:
            refused += 1
            misses += 1
            continue
        node = best.candidate
        heap = slots[node.node_id]
        free = heapq.heappop(heap)
        start = max(now + best.transfer_s, free)
        finish = start + best.compute_s
        heapq.heappush(heap, finish)
        latency = finish - now
        latencies.append(latency)
        if latency > task.request.intent.deadline_s:
            misses += 1
        energy += best.energy_j
        carbon += best.carbon_g
        cost += best.cost
        placed[node.tier] = placed.get(node.tier, 0) + 1
    ordered = sorted(latencies)
    n = len(workload.tasks)
    return SimResult(
        policy=policy.name,
        tasks=n,
        mean_latency_s=sum(ordered) / len(ordered) if ordered else 0.0,
        p95_latency_s=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0.0,
        miss_rate=misses / n if n else 0.0,
        refused=refused,
        energy_j=energy,
        carbon_g=carbon,
        cost=cost,
        placed=placed,
    )


def compare(seed: int, policies: Sequence[Policy] | None = None, **sizes: int) -> list[SimResult]:
    """Every policy on the same generated workload."""
    workload = generate(seed, **sizes)
    return [simulate(workload, p) for p in (policies or baseline_policies(seed))]
