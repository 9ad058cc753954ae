"""``securemesh.tasks``: tasks across end, edge and cloud (docs/tasks.md).

* Task types -- :class:`TaskRegistry` (``@registry.task("name")``),
  :class:`TaskType`, :func:`load_task_types`: Python callables registered by
  name, pydantic-typed arguments and results; code never travels.
* Requests and intent -- :class:`TaskRequest`, :class:`TaskIntent`
  (deadline, budget, privacy ``any``/``edge-only``/``device-only``, weights),
  :class:`InlineInput` (raw frames), :class:`ObjectRef` (stored objects, for
  locality), :func:`new_request`.
* Placement, pure code -- :class:`Scheduler`, :class:`Candidate`,
  :func:`estimate` (the cost model), the policies (:class:`IntentAware`, the
  default; :class:`LatencyFirst`, :class:`EnergyAware`, :class:`CarbonAware`,
  :class:`CostAware`, :class:`Locality`, :class:`Weighted`; :class:`Adaptive`,
  a contextual bandit that learns nodes' real completion times; baselines
  :class:`RandomPolicy`, :class:`RoundRobin`, :class:`AlwaysTier`),
  :class:`NoPlacement`; :class:`CandidateTable`, the intent-aware decision
  vectorized over many nodes. :mod:`securemesh.tasks.sim` compares policies.
* Execution -- :class:`TaskService`, the ``tasks`` service on the node seam
  (executor, and scheduler where submissions arrive); :class:`SignedTaskResult`
  and :func:`verify_result` (the executor's Ed25519 signature);
  :class:`WorkerPool`, the executor's worker processes for plain functions
  (:func:`locate` finds the name a worker imports a function by).
"""

from __future__ import annotations

from securemesh.tasks._model import (
    InlineInput,
    ObjectRef,
    Privacy,
    SignedTaskResult,
    TaskInput,
    TaskIntent,
    TaskOutcome,
    TaskPlacement,
    TaskRequest,
    TaskRun,
    canonical_json,
    new_request,
)
from securemesh.tasks._registry import TaskRegistry, TaskType, load_task_types
from securemesh.tasks._scheduler import (
    Adaptive,
    AlwaysTier,
    Candidate,
    CarbonAware,
    CostAware,
    EnergyAware,
    Estimate,
    IntentAware,
    LatencyFirst,
    Locality,
    LocalityHook,
    NoPlacement,
    Policy,
    RandomPolicy,
    RoundRobin,
    Scheduler,
    Weighted,
    allowed_tiers,
    candidate_from_report,
    estimate,
)
from securemesh.tasks._service import (
    MSG_ABORT,
    MSG_CANCEL,
    MSG_PLACE,
    MSG_RESULT,
    MSG_RUN,
    MSG_START,
    MSG_STATUS,
    MSG_SUBMIT,
    MSG_TYPES,
    DeadlinePassed,
    ObjectReader,
    TaskBusy,
    TaskCancelled,
    TaskFailed,
    TaskPoll,
    TaskQuery,
    TaskService,
    TaskState,
    TaskStates,
    TaskWait,
    UnknownTaskType,
    verify_result,
)
from securemesh.tasks._table import CandidateTable
from securemesh.tasks._workers import WorkerCrashed, WorkerPool, WorkerTaskError, locate

__all__ = [
    "Adaptive",
    "AlwaysTier",
    "Candidate",
    "CandidateTable",
    "CarbonAware",
    "CostAware",
    "DeadlinePassed",
    "EnergyAware",
    "Estimate",
    "InlineInput",
    "IntentAware",
    "LatencyFirst",
    "Locality",
    "LocalityHook",
    "MSG_ABORT",
    "MSG_CANCEL",
    "MSG_PLACE",
    "MSG_RESULT",
    "MSG_RUN",
    "MSG_START",
    "MSG_STATUS",
    "MSG_SUBMIT",
    "MSG_TYPES",
    "NoPlacement",
    "ObjectReader",
    "ObjectRef",
    "Policy",
    "Privacy",
    "RandomPolicy",
    "RoundRobin",
    "Scheduler",
    "SignedTaskResult",
    "TaskBusy",
    "TaskCancelled",
    "TaskFailed",
    "TaskInput",
    "TaskIntent",
    "TaskOutcome",
    "TaskPoll",
    "TaskQuery",
    "TaskRegistry",
    "TaskRequest",
    "TaskPlacement",
    "TaskRun",
    "TaskService",
    "TaskState",
    "TaskStates",
    "TaskType",
    "TaskWait",
    "UnknownTaskType",
    "Weighted",
    "WorkerCrashed",
    "WorkerPool",
    "WorkerTaskError",
    "allowed_tiers",
    "candidate_from_report",
    "canonical_json",
    "estimate",
    "load_task_types",
    "locate",
    "new_request",
    "verify_result",
]
