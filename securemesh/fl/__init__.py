"""``securemesh.fl``: secure-aggregation federated learning (docs/federated-learning.md).

* Secure aggregation, sans-I/O -- :class:`SecAggConfig` (cohort, ring, the
  SecAgg+ neighbour graph, threshold, stage timeout), :class:`SecAggClient`
  and :class:`SecAggServer` (Bonawitz et al., CCS 2017; Bell et al., CCS
  2020), :class:`RoundAborted`, :class:`Exclusion`; :func:`run_in_memory`
  drives a whole round in one process.
* Quantization -- :class:`Quantizer`: clipping, stochastic rounding (ChaCha20
  PRG), sample-count weights, and a refusal of any ring that could overflow.
"""

from __future__ import annotations

from securemesh.fl._config import SecAggConfig, default_degree, default_threshold
from securemesh.fl._memory import DROP_STAGES, MemoryRound, run_in_memory
from securemesh.fl._quant import Quantizer
from securemesh.fl._secagg import (
    ClientState,
    Exclusion,
    RoundAborted,
    SecAggClient,
    SecAggServer,
    ServerState,
)

__all__ = [
    "DROP_STAGES",
    "MemoryRound",
    "Quantizer",
    "run_in_memory",
    "ClientState",
    "Exclusion",
    "RoundAborted",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "ServerState",
    "default_degree",
    "default_threshold",
]
