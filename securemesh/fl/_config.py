"""The parameters of one secure-aggregation round and its neighbour graph.

Theory of operation
-------------------
Bonawitz et al. (CCS 2017) share every client's secrets with *all* other
clients: O(n) key agreements, shares and PRG expansions per client. Bell et
al. (CCS 2020, "SecAgg+") replace the complete graph by a sparse random graph
of degree k = O(log n): a client shares its secrets with, and masks against,
only its k neighbours, and the protocol stays correct and private as long as
the graph is chosen at random *after* the cohort is fixed and at least
``threshold`` members of every neighbourhood survive.

The graph here is Bell et al.'s choice: a Harary graph H(k, n) (every node
joined to the k/2 nearest on each side of a ring) over a uniformly random
ordering of the cohort. The ordering is drawn from the round's shared
randomness, ``graph_seed`` (32 bytes the coordinator draws from the OS CSPRNG
and announces, signed, with the round): each client's position is the rank of
``SHA-256("securemesh/fl/graph/v1" || graph_seed || client id)``. Every party
computes the same graph from the announced round; nobody picks it after seeing
keys. With ``degree >= n - 1`` the graph is complete and the protocol is the
original SecAgg.

A client's *holders* are its neighbours and itself, sorted by id; holder
number i (from 1) receives the Shamir share with x = i.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import cached_property

from securemesh.errors import LocalError
from securemesh.fl._codec import check_client_id

__all__ = [
    "MAX_COHORT",
    "MAX_LENGTH",
    "ROUND_ID_SIZE",
    "SecAggConfig",
    "default_degree",
    "default_threshold",
]

ROUND_ID_SIZE = 16
GRAPH_SEED_SIZE = 32
MAX_COHORT = 10_000
MAX_LENGTH = 1 << 24  # parameters per round
_GRAPH_DOMAIN = b"securemesh/fl/graph/v1\x00"


def default_degree(n: int) -> int:
    """SecAgg+ degree for a cohort of ``n``: 2 * ceil(log2 n), or complete when small.

    For n = 100 this is 14 neighbours, 15 holders per secret (Flower's
    ``num_shares = 15`` for the same cohort).
    """
    if n <= 2:
        return max(n - 1, 0)
    return min(n - 1, 2 * math.ceil(math.log2(n)))


def default_threshold(holders: int) -> int:
    """A strict majority of each secret's holders: ``holders // 2 + 1``."""
    return holders // 2 + 1


@dataclass(frozen=True)
class SecAggConfig:
    """One round: who, how long a vector, which ring, which graph, which threshold.

    ``threshold`` is the Shamir threshold t: t holders of a secret rebuild it,
    t - 1 learn nothing. It must be a strict majority of every holder set so
    that no two disjoint sets of holders can each rebuild a secret (the server
    can never obtain both a client's self-mask seed and its masking key from
    honest clients, Bonawitz et al. §4, Bell et al. §3). A round also aborts
    when fewer than t clients remain at any stage.
    """

    round_id: bytes
    cohort: tuple[str, ...]
    length: int
    graph_seed: bytes
    bits: int = 32
    degree: int | None = None
    threshold: int | None = None
    stage_timeout: float = 30.0
    _degree: int = field(init=False, repr=False, compare=False, default=0)
    _threshold: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        if not isinstance(self.round_id, bytes) or len(self.round_id) != ROUND_ID_SIZE:
            raise LocalError(f"round_id is {ROUND_ID_SIZE} bytes")
        if not isinstance(self.graph_seed, bytes) or len(self.graph_seed) != GRAPH_SEED_SIZE:
            raise LocalError(f"graph_seed is {GRAPH_SEED_SIZE} bytes")
        cohort = tuple(self.cohort)
        if not 2 <= len(cohort) <= MAX_COHORT:
            raise LocalError(f"a cohort has 2..{MAX_COHORT} clients")
        for client in cohort:
            check_client_id(client)
        if len(set(cohort)) != len(cohort):
            raise LocalError("cohort has duplicate clients")
        object.__setattr__(self, "cohort", tuple(sorted(cohort)))
        if type(self.length) is not int or not 1 <= self.length <= MAX_LENGTH:
            raise LocalError(f"length must be in 1..{MAX_LENGTH}")
        if type(self.bits) is not int or not 8 <= self.bits <= 62:
            raise LocalError("bits must be in 8..62")
        if not self.stage_timeout > 0:
            raise LocalError("stage_timeout must be positive")
        n = len(cohort)
        degree = default_degree(n) if self.degree is None else self.degree
        if type(degree) is not int or degree < 1:
            raise LocalError("degree must be a positive integer")
        degree = min(degree, n - 1)
        if degree < n - 1 and degree % 2:
            raise LocalError("a sparse (Harary) graph needs an even degree")
        holders = degree + 1
        threshold = default_threshold(holders) if self.threshold is None else self.threshold
        if type(threshold) is not int or not 2 * threshold > holders or threshold > holders:
            raise LocalError(
                f"threshold must be a strict majority of the {holders} holders of each secret"
            )
        object.__setattr__(self, "_degree", degree)
        object.__setattr__(self, "_threshold", threshold)

    @property
    def t(self) -> int:
        """The effective Shamir threshold."""
        return self._threshold

    @property
    def k(self) -> int:
        """The effective neighbour-graph degree (n - 1: complete graph, plain SecAgg)."""
        return self._degree

    @property
    def dtype(self) -> str:
        return "uint32" if self.bits <= 32 else "uint64"

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    @cached_property
    def _neighbours(self) -> dict[str, tuple[str, ...]]:
        n = len(self.cohort)
        if self._degree >= n - 1:
            return {c: tuple(o for o in self.cohort if o != c) for c in self.cohort}
        ring = sorted(
            self.cohort,
            key=lambda c: hashlib.sha256(
                _GRAPH_DOMAIN + self.graph_seed + c.encode("utf-8")
            ).digest(),
        )
        half = self._degree // 2
        out: dict[str, set[str]] = {c: set() for c in self.cohort}
        for i, c in enumerate(ring):
            for step in range(1, half + 1):
                other = ring[(i + step) % n]
                out[c].add(other)
                out[other].add(c)
        return {c: tuple(sorted(v)) for c, v in out.items()}

    def neighbours(self, client: str) -> tuple[str, ...]:
        """The client's neighbours in this round's graph, sorted (never itself)."""
        return self._neighbours[client]

    @cached_property
    def _holders(self) -> dict[str, tuple[str, ...]]:
        return {c: tuple(sorted((*v, c))) for c, v in self._neighbours.items()}

    @cached_property
    def _xs(self) -> dict[str, dict[str, int]]:
        return {c: {h: i + 1 for i, h in enumerate(v)} for c, v in self._holders.items()}

    def holders(self, client: str) -> tuple[str, ...]:
        """Who holds shares of ``client``'s secrets: its neighbours and itself, sorted."""
        return self._holders[client]

    def share_x(self, owner: str, holder: str) -> int:
        """The Shamir x coordinate of ``holder``'s share of ``owner``'s secrets."""
        return self._xs[owner][holder]
