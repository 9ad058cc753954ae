"""The task wire models: intent, inputs, requests and signed results (strict, bounded).

A task request names a *registered* task type (code never travels), carries
its arguments as a JSON object (validated on the executor by the type's own
pydantic model), its inputs (inline bytes as raw frames of the envelope, or
references to stored objects) and its **intent**: what the developer needs
(deadline, budget, weights, privacy), never where it should run.

Every model is strict pydantic (``extra="forbid"``, no coercion, frozen) with
hard bounds; the envelope's own size limits (protocol.md §3) bound the rest.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

__all__ = [
    "MAX_ARGS_BYTES",
    "MAX_INPUTS",
    "MAX_RESULT_BYTES",
    "InlineInput",
    "ObjectRef",
    "Privacy",
    "SignedTaskResult",
    "TaskInput",
    "TaskIntent",
    "TaskOutcome",
    "TaskPlacement",
    "TaskRequest",
    "TaskRun",
    "canonical_json",
    "new_request",
    "request_digest",
]

#: At most this many inputs per task (inline frames plus object references).
MAX_INPUTS: Final = 16
#: The arguments' canonical JSON, at most.
MAX_ARGS_BYTES: Final = 64 * 1024
#: A result's canonical JSON, at most.
MAX_RESULT_BYTES: Final = 256 * 1024
#: One inline input frame, at most (the envelope limit bounds their sum).
MAX_INLINE_BYTES: Final = 4 * 1024 * 1024

TaskTypeName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.-]{0,63}$")
]
TaskId = Annotated[str, Field(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")]
NodeId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
Hex32 = Annotated[str, Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]
#: a storage object id (16 bytes, securemesh.storage) or any 32-byte digest
ObjectIdHex = Annotated[str, Field(pattern=r"^(?:[0-9a-f]{32}|[0-9a-f]{64})$")]
ObjectName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._/-]{1,255}$")]
Weight = Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False)]

#: ``any``: anywhere; ``edge-only``: never on a cloud node; ``device-only``: only on
#: an end device (never leaves the end tier).
Privacy = Literal["any", "edge-only", "device-only"]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8, no NaN: the bytes that are hashed and signed."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


class TaskIntent(_Strict):
    """What the task needs; the scheduler decides where it runs (docs/tasks.md).

    ``deadline_s`` is relative to submission; ``budget`` bounds the predicted
    cost (price units, ``None``: unbounded); the weights trade the predicted
    time (seconds) against energy (joules), carbon (grams CO2e), cost and
    locality (megabytes of input moved) in the intent-aware objective.
    """

    deadline_s: float = Field(gt=0.0, le=86_400.0, allow_inf_nan=False)
    budget: float | None = Field(default=None, ge=0.0, le=1e12, allow_inf_nan=False)
    privacy: Privacy = "any"
    time_weight: Weight = 1.0
    energy_weight: Weight = 0.0
    carbon_weight: Weight = 0.0
    cost_weight: Weight = 0.0
    locality_weight: Weight = 0.0


class InlineInput(_Strict):
    """Input bytes carried as raw frame ``frame`` of the request envelope."""

    kind: Literal["inline"] = "inline"
    frame: int = Field(ge=0, lt=MAX_INPUTS)
    size: int = Field(ge=0, le=MAX_INLINE_BYTES)
    sha256: Hex32


class ObjectRef(_Strict):
    """A stored object (securemesh.storage) the task reads: its id, size and holders.

    ``holders`` is a locality hint: the nodes that hold shards of the object
    (the submitter fills it from the manifest's placement, or a
    :data:`~securemesh.tasks.LocalityHook` answers it at placement).

    With ``name``, the object is the *submitter's* stored object ``name``: the
    executor fetches it through the storage client (the manifest verified
    under the submitter's key) and decrypts it with the data key the owner
    wrapped for it -- the owner shares it with the executor that
    ``task.place`` chose, and pins the submission there (``TaskRequest.executor``;
    docs/tasks.md). The task function gets its bytes after the inline inputs.
    Without ``name`` it is a locality hint only (nothing is fetched).
    """

    kind: Literal["object"] = "object"
    object_id: ObjectIdHex
    size: int = Field(ge=0, le=2**53)
    holders: list[NodeId] = Field(default_factory=list, max_length=64)
    name: ObjectName | None = None


TaskInput = Annotated[InlineInput | ObjectRef, Field(discriminator="kind")]


class TaskRequest(_Strict):
    """``task.submit`` body: one task with intent, from the submitter to a scheduler."""

    task_id: TaskId
    task_type: TaskTypeName
    args: dict[str, JsonValue] = Field(default_factory=dict, max_length=256)
    inputs: list[TaskInput] = Field(default_factory=list, max_length=MAX_INPUTS)
    intent: TaskIntent
    #: Estimated work in the mesh's work units (a node's ``speed`` is units/s).
    work: float = Field(gt=0.0, le=1e12, allow_inf_nan=False)
    #: Pinned placement (from ``task.place``): only this node may run the task, so
    #: a data key shared with it is never needed elsewhere (no retry on another node).
    executor: NodeId | None = None

    @model_validator(mode="after")
    def _bounded(self) -> TaskRequest:
        if len(canonical_json(self.args)) > MAX_ARGS_BYTES:
            raise ValueError(f"args exceed {MAX_ARGS_BYTES} bytes")
        frames = [i.frame for i in self.inputs if isinstance(i, InlineInput)]
        if sorted(frames) != list(range(len(frames))):
            raise ValueError("inline inputs must name frames 0..n-1, once each")
        return self

    @property
    def inline_bytes(self) -> int:
        return sum(i.size for i in self.inputs if isinstance(i, InlineInput))

    @property
    def stored_objects(self) -> list[ObjectRef]:
        """The inputs the executor fetches from storage (object refs with a name)."""
        return [i for i in self.inputs if isinstance(i, ObjectRef) and i.name is not None]


class TaskPlacement(_Strict):
    """``task.place`` reply: where the scheduler would run the request now.

    ``certificate`` is the node's signed certificate (hex): the submitter
    verifies it against its own trust store before wrapping a data key for
    its ``kx_key`` -- it does not take the scheduler's word for the key.
    """

    node: NodeId
    predicted_ms: int = Field(ge=0, le=2**53)
    certificate: str = Field(min_length=2, max_length=16_384, pattern=r"^[0-9a-f]+$")


class TaskRun(_Strict):
    """``task.run`` body: the scheduler asks an executor to run a task before ``deadline_ms``."""

    request: TaskRequest
    submitter: NodeId
    deadline_ms: int = Field(ge=0, le=2**53)
    attempt: int = Field(ge=1, le=16)
    #: the submitter's Ed25519 verify key (hex), from the scheduler's view of its
    #: certificate: what the executor checks the stored objects' manifests under
    submitter_key: Hex32 | None = None


class TaskOutcome(_Strict):
    """The statement an executor signs about one run (``SignedTaskResult.outcome``)."""

    task_id: TaskId
    task_type: TaskTypeName
    executor: NodeId
    submitter: NodeId
    #: sha256 of the canonical JSON of the request's args and of each input, in order
    request_sha256: Hex32
    ok: bool
    result: JsonValue = None
    error: str = Field(default="", max_length=256)
    started_ms: int = Field(ge=0, le=2**53)
    finished_ms: int = Field(ge=0, le=2**53)


class SignedTaskResult(_Strict):
    """An outcome and the executor's Ed25519 signature over its canonical JSON.

    Verifiable by anyone holding the executor's certificate
    (:func:`securemesh.tasks.verify_result`), after any number of hops.
    """

    outcome: TaskOutcome
    signature: str = Field(min_length=128, max_length=128, pattern=r"^[0-9a-f]{128}$")
    #: Filled by the scheduler: the nodes tried before, in order (not signed).
    attempts: list[NodeId] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _bounded(self) -> SignedTaskResult:
        if len(canonical_json(self.outcome.result)) > MAX_RESULT_BYTES:
            raise ValueError(f"result exceeds {MAX_RESULT_BYTES} bytes")
        return self


def request_digest(request: TaskRequest, inline: list[bytes]) -> str:
    """sha256 over the request's identity, arguments and input digests (what was asked)."""
    h = hashlib.sha256()
    h.update(canonical_json([request.task_id, request.task_type, request.args]))
    for item in request.inputs:
        if isinstance(item, InlineInput):
            h.update(b"I" + hashlib.sha256(inline[item.frame]).digest())
        else:
            h.update(b"O" + bytes.fromhex(item.object_id))
    return h.hexdigest()


def new_request(
    task_type: str,
    args: dict[str, Any] | None = None,
    *,
    intent: TaskIntent,
    work: float = 1.0,
    inline: list[bytes] | None = None,
    objects: list[ObjectRef] | None = None,
    task_id: str | None = None,
    executor: str | None = None,
) -> tuple[TaskRequest, list[bytes]]:
    """A request (random task id unless given) and the frames that carry its inline inputs."""
    import os  # noqa: PLC0415

    frames = list(inline or [])
    inputs: list[InlineInput | ObjectRef] = [
        InlineInput(frame=i, size=len(b), sha256=hashlib.sha256(b).hexdigest())
        for i, b in enumerate(frames)
    ]
    inputs.extend(objects or [])
    request = TaskRequest(
        task_id=task_id or os.urandom(16).hex(),
        task_type=task_type,
        args=args or {},
        inputs=inputs,
        intent=intent,
        work=work,
        executor=executor,
    )
    return request, frames
