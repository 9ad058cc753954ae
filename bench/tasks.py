"""Task placement benchmark: scheduler decisions per second and the policies compared.

    python bench/tasks.py [--nodes 1000] [--seconds 2] [--seed 1]

Prints one human-readable line per figure, then, as the LAST line, one JSON
object:

* ``decisions_per_s``: intent-aware placements per second over ``--nodes``
  candidates (mixed tiers, half of them offering the type), one request with
  an object input (locality) and a deadline, with the vectorized
  ``CandidateTable.best`` (the table built once, as a scheduler keeps it
  between report changes); ``decisions_per_s_scalar``: the same with
  ``Scheduler.rank`` (every feasible node ranked, one object per node);
* on the standard simulated workload (``securemesh.tasks.sim``, ``--seed``):
  ``miss_rate_intent``, ``miss_rate_best_baseline`` (the lowest miss rate of
  the baselines that ignore deadlines: random, round-robin, always-cloud,
  always-edge, always-local), ``energy_intent``, ``energy_best_baseline``
  (the energy of that best baseline), and ``mean_latency_intent``;
* ``optimality_gap``: the intent-aware policy's mean gap to the exhaustive
  optimum (``securemesh.tasks.sim.optimum``) on 5 small instances (2 devices,
  2 edges, a cloud, 6 tasks), as a fraction.
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
from securemesh.tasks.sim import CONSTRAINED, compare, optimality_gap


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


def decisions_per_s(nodes: int, seconds: float, seed: int, *, vectorized: bool) -> float:
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
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(20):
            decide()
        count += 20
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()
    rate = decisions_per_s(args.nodes, args.seconds, args.seed, vectorized=True)
    rate_scalar = decisions_per_s(args.nodes, args.seconds / 2, args.seed, vectorized=False)
    results = {r.policy: r for r in compare(args.seed)}
    baselines = [r for name, r in results.items() if name not in CONSTRAINED]
    best = min(baselines, key=lambda r: (r.miss_rate, r.energy_j))
    intent = results["intent"]
    figures: dict[str, object] = {
        "decisions_per_s": round(rate, 1),
        "decisions_per_s_scalar": round(rate_scalar, 1),
        "nodes": args.nodes,
        "miss_rate_intent": round(intent.miss_rate, 4),
        "miss_rate_best_baseline": round(best.miss_rate, 4),
        "best_baseline": best.policy,
        "energy_intent": round(intent.energy_j, 1),
        "energy_best_baseline": round(best.energy_j, 1),
        "mean_latency_intent": round(intent.mean_latency_s, 4),
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
