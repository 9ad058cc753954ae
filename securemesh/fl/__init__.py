"""``securemesh.fl``: secure-aggregation federated learning (docs/federated-learning.md).

* Secure aggregation, sans-I/O -- :class:`SecAggConfig` (cohort, ring, the
  SecAgg+ neighbour graph, threshold, stage timeout), :class:`SecAggClient`
  and :class:`SecAggServer` (Bonawitz et al., CCS 2017; Bell et al., CCS
  2020), :class:`RoundAborted`, :class:`Exclusion`; :func:`run_in_memory`
  drives a whole round in one process.
* FL -- :class:`Federation` (client selection, local training, aggregation,
  one ``fl.round_finished`` audit event per round with the model hash),
  :class:`LocalTraining` (FedAvg, FedProx), :class:`LogisticRegression`,
  :class:`MLP`, :class:`ClientDP` (clipping + Gaussian noise, RDP epsilon).
* Aggregation modes -- :class:`PlainAggregator`, :class:`SecAggAggregator`,
  :class:`HEAggregator` (``he``: CKKS through ``securemesh.he``; the roles
  :class:`HEModelOwner` holding the secret key, :class:`HESum` the
  aggregator holding only the public context, :func:`encrypt_update` the
  client); :func:`register_aggregator` for other modes.
* Over the bus -- :class:`FLCoordinator`, the ``fl`` service
  (``services = ["securemesh.fl:FLCoordinator"]``); :class:`Participant`,
  the device side (``Device.join_federation``); the message bodies.
* Quantization -- :class:`Quantizer`: clipping, stochastic rounding (ChaCha20
  PRG), sample-count weights, and a refusal of any ring that could overflow.
"""

from __future__ import annotations

from securemesh.fl._aggregate import (
    Aggregate,
    Aggregator,
    ClientUpdate,
    PlainAggregator,
    SecAggAggregator,
    make_aggregator,
    register_aggregator,
)
from securemesh.fl._bus import (
    MSG_HE_ROUND,
    MSG_JOIN,
    MSG_ROUND,
    MSG_RUN,
    MSG_SECAGG,
    MSG_STATUS,
    HERoundBody,
    JoinBody,
    RoundBody,
    RunBody,
)
from securemesh.fl._config import SecAggConfig, default_degree, default_threshold
from securemesh.fl._dp import ClientDP, clip_update, epsilon_for
from securemesh.fl._federation import AUDIT_KINDS, Federation, RoundRecord, model_hash
from securemesh.fl._he import HEAggregator, HEModelOwner, HESum, encrypt_update
from securemesh.fl._memory import DROP_STAGES, MemoryRound, run_in_memory
from securemesh.fl._models import MLP, LogisticRegression, Model
from securemesh.fl._participant import Participant, TrainFn
from securemesh.fl._quant import Quantizer
from securemesh.fl._secagg import (
    ClientState,
    Exclusion,
    RoundAborted,
    SecAggClient,
    SecAggServer,
    ServerState,
)
from securemesh.fl._service import FLCoordinator
from securemesh.fl._train import LocalTraining, train_local

__all__ = [
    "MSG_HE_ROUND",
    "MSG_JOIN",
    "MSG_ROUND",
    "MSG_RUN",
    "MSG_SECAGG",
    "MSG_STATUS",
    "HERoundBody",
    "JoinBody",
    "RoundBody",
    "RunBody",
    "Participant",
    "TrainFn",
    "FLCoordinator",
    "HEAggregator",
    "HEModelOwner",
    "HESum",
    "encrypt_update",
    "AUDIT_KINDS",
    "Aggregate",
    "Aggregator",
    "ClientDP",
    "ClientUpdate",
    "Federation",
    "LocalTraining",
    "LogisticRegression",
    "MLP",
    "Model",
    "PlainAggregator",
    "RoundRecord",
    "SecAggAggregator",
    "clip_update",
    "epsilon_for",
    "make_aggregator",
    "model_hash",
    "register_aggregator",
    "train_local",
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
