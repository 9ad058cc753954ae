"""Where an object's n shards go: rendezvous hashing over live nodes, spread over failure domains.

Rendezvous (highest-random-weight) hashing, Thaler & Ravishankar 1998: each
candidate node gets the score ``BLAKE2b-64(object_id || 0x00 || node_id)``
and an object prefers nodes by descending score. Adding or removing a node
moves only the objects that ranked it among their top n; every writer computes
the same list from the same live set, with no coordination.

Failure domains: shard j goes to the best-ranked remaining node whose domain
holds the fewest of this object's shards so far, so the n shards spread over
as many domains as exist (with d >= n domains no two share one; with fewer,
the load per domain differs by at most one). A node without a label is its
own domain. Shard j of every segment goes to ``placement[j]``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from securemesh.errors import LocalError

__all__ = ["Candidate", "place", "rendezvous_score", "replacements"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A live storage node and its failure-domain label ("" = its own domain)."""

    node_id: str
    failure_domain: str = ""

    @property
    def domain(self) -> str:
        return self.failure_domain or f"\x00node:{self.node_id}"


def rendezvous_score(object_id: bytes, node_id: str) -> int:
    digest = hashlib.blake2b(object_id + b"\x00" + node_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def place(object_id: bytes, candidates: Iterable[Candidate], n: int) -> list[str]:
    """The ``n`` distinct nodes holding shards ``0..n-1`` of ``object_id``."""
    unique = {c.node_id: c for c in candidates}
    if len(unique) < n:
        raise LocalError(f"placement needs {n} live storage nodes, {len(unique)} available")
    ranked = sorted(
        unique.values(), key=lambda c: (-rendezvous_score(object_id, c.node_id), c.node_id)
    )
    used: Counter[str] = Counter()
    chosen: list[str] = []
    while len(chosen) < n:
        # min() keeps the first of equals: the best-ranked node of a least-used domain
        best = min((c for c in ranked if c.node_id not in chosen), key=lambda c: used[c.domain])
        chosen.append(best.node_id)
        used[best.domain] += 1
    return chosen


def replacements(
    object_id: bytes, candidates: Iterable[Candidate], keep: Iterable[str], count: int
) -> list[str]:
    """``count`` new nodes for an object that keeps ``keep`` (repair), by the same rule.

    Candidates outside ``keep`` in rendezvous order, each from the domain that
    holds the fewest of the object's shards counting the kept nodes.
    """
    unique = {c.node_id: c for c in candidates}
    kept = set(keep)
    free = sorted(
        (c for c in unique.values() if c.node_id not in kept),
        key=lambda c: (-rendezvous_score(object_id, c.node_id), c.node_id),
    )
    if len(free) < count:
        raise LocalError(f"repair needs {count} more storage nodes, {len(free)} available")
    used: Counter[str] = Counter(
        unique[node].domain if node in unique else f"\x00node:{node}" for node in kept
    )
    chosen: list[str] = []
    while len(chosen) < count:
        best = min((c for c in free if c.node_id not in chosen), key=lambda c: used[c.domain])
        chosen.append(best.node_id)
        used[best.domain] += 1
    return chosen
