"""Task placement benchmark: scheduler decisions per second and the policies compared.

    python bench/scheduler.py [--nodes 1000] [--seconds 2] [--seed 1] [--chart PNG]

Prints one human-readable line per figure, then, as the LAST line, one JSON
object:

* ``decisions_per_s``: intent-aware placements per second over ``--nodes``
  candidates (mixed tiers, half of them offering the type), one request with
  an object input (locality) and a deadline, with the vectorized
  ``CandidateTable.best`` (the table built once, as a scheduler keeps it
  between report changes), by the wall clock, and ``decisions_per_cpu_s`` by
  the process's CPU time (steadier on a shared machine);
  ``decisions_per_s_scalar``: the same with ``Scheduler.rank`` (every feasible
  node ranked, one object per node), the baseline;
* on the standard simulated workload (``securemesh.tasks.sim.generate``'s
  defaults: 8 devices, 3 edges, a cloud, 400 tasks at 40/s, half of them
  interactive with an input from the device; ``--seed``):
  ``miss_rate_intent``, ``miss_rate_best_baseline`` (the lowest miss rate of
  the baselines that ignore deadlines: random, round-robin, always-cloud,
  always-edge, always-local), ``energy_intent``, ``energy_best_baseline``
  (the energy of that best baseline), and ``mean_latency_intent``;
  ``miss_ratio`` (intent / best baseline) and ``energy_ratio``; the same two
  ratios averaged over seeds 1-5 (``*_mean5``); and, for comparison, the
  light workload of the first version (10 tasks/s, no inputs: ``light_*``);
* with misreported speeds (``misreport=0.7``, seeds 1-5): the mean miss rate
  of the intent-aware and the adaptive policy (``misreport_*``);
* ``optimality_gap``: the intent-aware policy's mean gap to the exhaustive
  optimum (``securemesh.tasks.sim.optimum``) on 5 small instances (2 devices,
  2 edges, a cloud, 6 tasks), as a fraction.

``--chart PNG`` also writes the chart of the standard workload's table
(``securemesh.tasks.sim.chart``; docs/tasks-sim.png is one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time

from securemesh.tasks import (
    Candidate,
    CandidateTable,
    ObjectRef,
    Scheduler,
    TaskIntent,
    new_request,
)
from securemesh.tasks.sim import CONSTRAINED, SimResult, chart, compare, optimality_gap


def _candidates(n: int, rng: random.Random) -> list[Candidate]:
    tiers = ("end", "edge", "cloud")
    return [
        Candidate(
            f"n{i}",
            tiers[i % 3],
            frozenset({"bench.work"} if i % 2 == 0 else {"other"}),
            capacity=rng.choice((1, 4, 16)),
            inflight=rng.randrange(8),
            queue_length=rng.randrange(8),
            speed=rng.uniform(10, 500),
            rtt_ms=rng.uniform(0, 80),
            energy_per_unit=rng.uniform(0.3, 4),
            carbon_intensity=rng.uniform(50, 500),
            price=rng.uniform(0, 0.05),
        )
        for i in range(n)
    ]


def decisions_per_s(
    nodes: int, seconds: float, seed: int, *, vectorized: bool
) -> tuple[float, float]:
    """Decisions per wall-clock second and per CPU second."""
    rng = random.Random(seed)
    cands = _candidates(nodes, rng)
    ref = ObjectRef(object_id="ab" * 32, size=10_000_000, holders=["n0", "n2", "n4"])
    request, _ = new_request(
        "bench.work",
        intent=TaskIntent(deadline_s=5.0, energy_weight=0.01, locality_weight=0.1),
        work=50.0,
        objects=[ref],
    )
    scheduler = Scheduler()
    table = CandidateTable(cands)
    assert table.best(request).node_id == scheduler.rank(request, cands)[0].candidate.node_id
    decide = (
        (lambda: table.best(request)) if vectorized else (lambda: scheduler.rank(request, cands))
    )
    count = 0
    cpu = time.process_time()
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(20):
            decide()
        count += 20
    return count / elapsed, count / max(1e-9, time.process_time() - cpu)


def versus_best_baseline(results: list[SimResult]) -> tuple[SimResult, SimResult]:
    """The intent-aware result and the deadline-blind baseline with the fewest misses."""
    by = {r.policy: r for r in results}
    baselines = [r for name, r in by.items() if name not in CONSTRAINED]
    return by["intent"], min(baselines, key=lambda r: (r.miss_rate, r.energy_j))


def ratios(intent: SimResult, best: SimResult) -> tuple[float, float]:
    """(intent's miss rate / the best baseline's, intent's energy / the best baseline's)."""
    miss = intent.miss_rate / best.miss_rate if best.miss_rate else float(intent.miss_rate > 0)
    return miss, intent.energy_j / best.energy_j


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chart", metavar="PNG", help="write the standard workload's chart")
    args = parser.parse_args()
    started = time.perf_counter()
    rate, rate_cpu = decisions_per_s(args.nodes, args.seconds, args.seed, vectorized=True)
    rate_scalar, _ = decisions_per_s(args.nodes, args.seconds / 2, args.seed, vectorized=False)
    standard = compare(args.seed)
    if args.chart:
        chart(standard, args.chart, title=f"standard workload, seed {args.seed}")
    intent, best = versus_best_baseline(standard)
    miss_ratio, energy_ratio = ratios(intent, best)
    over_seeds = [ratios(*versus_best_baseline(compare(s))) for s in range(1, 6)]
    light_intent, light_best = versus_best_baseline(compare(args.seed, rate=10.0, data=0.0))
    misreported = [compare(s, misreport=0.7) for s in range(1, 6)]

    def mean_miss(policy: str) -> float:
        return sum(next(r.miss_rate for r in rs if r.policy == policy) for rs in misreported) / 5

    figures: dict[str, object] = {
        "decisions_per_s": round(rate, 1),
        "decisions_per_cpu_s": round(rate_cpu, 1),
        "decisions_per_s_scalar": round(rate_scalar, 1),
        "nodes": args.nodes,
        "miss_rate_intent": round(intent.miss_rate, 4),
        "miss_rate_best_baseline": round(best.miss_rate, 4),
        "best_baseline": best.policy,
        "energy_intent": round(intent.energy_j, 1),
        "energy_best_baseline": round(best.energy_j, 1),
        "miss_ratio": round(miss_ratio, 3),
        "energy_ratio": round(energy_ratio, 3),
        "miss_ratio_mean5": round(sum(m for m, _ in over_seeds) / 5, 3),
        "energy_ratio_mean5": round(sum(e for _, e in over_seeds) / 5, 3),
        "mean_latency_intent": round(intent.mean_latency_s, 4),
        "light_miss_rate_intent": round(light_intent.miss_rate, 4),
        "light_miss_rate_best_baseline": round(light_best.miss_rate, 4),
        "light_energy_ratio": round(light_intent.energy_j / light_best.energy_j, 3),
        "misreport_miss_rate_intent_mean5": round(mean_miss("intent"), 4),
        "misreport_miss_rate_adaptive_mean5": round(mean_miss("adaptive"), 4),
        "optimality_gap": round(optimality_gap(range(1, 6)), 4),
        "seed": args.seed,
    }
    for name, value in figures.items():
        print(f"{name:28s} {value}")
    figures.update(
        python=platform.python_version(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        total_seconds=round(time.perf_counter() - started, 2),
    )
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
