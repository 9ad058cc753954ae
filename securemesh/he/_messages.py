"""The HE service's message types and their strict JSON bodies (docs/he.md, *Protocol*).

Ciphertexts and contexts never travel in a body: they are the raw frames of
their message (``he.job.create``: the public context; ``he.contribute``: one
ciphertext per chunk; ``he.job.result`` reply: the result chunks;
``he.job.get`` reply: the public context; ``he.score.context``: a context
with Galois keys; ``he.score``: the input chunks, and its reply the score).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "HE_TYPES",
    "MSG_ANNOUNCE",
    "MSG_CONTRIBUTE",
    "MSG_CREATE",
    "MSG_GET",
    "MSG_RESULT",
    "MSG_SCORE",
    "MSG_SCORE_CONTEXT",
    "Accepted",
    "ContextRef",
    "Contribution",
    "JobInfo",
    "JobRef",
    "JobResult",
    "JobSpec",
    "Operation",
    "ResultRequest",
    "ScoreRequest",
]

MSG_CREATE: Final = "he.job.create"
MSG_GET: Final = "he.job.get"
MSG_ANNOUNCE: Final = "he.job.announce"
MSG_CONTRIBUTE: Final = "he.contribute"
MSG_RESULT: Final = "he.job.result"
MSG_SCORE_CONTEXT: Final = "he.score.context"
MSG_SCORE: Final = "he.score"
HE_TYPES: Final = (
    MSG_CREATE,
    MSG_GET,
    MSG_ANNOUNCE,
    MSG_CONTRIBUTE,
    MSG_RESULT,
    MSG_SCORE_CONTEXT,
    MSG_SCORE,
)

#: Result chunks per ``he.job.result`` reply (the default node limit is 16 frames).
RESULT_FRAMES: Final = 8
#: A job's largest vector (values); 2^22 floats is 512 chunks of wide-16384.
MAX_LENGTH: Final = 1 << 22
MAX_CONTRIBUTORS: Final = 10_000

_STRICT = ConfigDict(strict=True, frozen=True, extra="forbid")
JobId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
NodeIdStr = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
PresetName = Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")]
ModelName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
Operation = Literal["sum", "mean", "stats"]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
State = Literal["collecting", "computing", "done", "failed"]


class JobSpec(BaseModel):
    """``he.job.create``: a job the key owner (the sender) asks the aggregator to run.

    ``op``: ``sum`` (Σ wᵢxᵢ), ``mean`` (the same, divided by Σ wᵢ at the key
    owner), ``stats`` (contributors encrypt ``x ‖ x²``: sum, mean and variance
    per coordinate). The job collects until ``max_contributors`` complete
    contributions or ``deadline`` (Unix seconds), then needs at least
    ``min_contributors`` (≥ 2: a "sum" of one input is that input).
    ``contributors``: the only nodes that may contribute (empty: any node the
    operator's policy admits).
    """

    model_config = _STRICT
    job_id: JobId
    op: Operation
    preset: PresetName
    length: int = Field(ge=1, le=MAX_LENGTH)
    weighted: bool = False
    max_weight: PositiveFloat = 1.0
    max_abs_value: PositiveFloat = 1.0
    precision: PositiveFloat = 1e-2
    min_contributors: int = Field(default=2, ge=2, le=MAX_CONTRIBUTORS)
    max_contributors: int = Field(ge=2, le=MAX_CONTRIBUTORS)
    deadline: float = Field(gt=0, allow_inf_nan=False)
    contributors: list[NodeIdStr] = Field(default_factory=list, max_length=MAX_CONTRIBUTORS)


class JobInfo(BaseModel):
    """A job as the aggregator runs it (``he.job.create``/``he.job.get`` reply, ``announce``)."""

    model_config = _STRICT
    job_id: JobId
    op: Operation
    preset: PresetName
    length: int
    weighted: bool
    max_weight: float
    owner: NodeIdStr
    aggregator: NodeIdStr
    deadline: float
    min_contributors: int
    max_contributors: int
    context_digest: Hex32
    state: State
    #: the values each contribution encrypts (``2·length`` for ``stats``)
    encrypted_length: int
    #: how those values are cut into ciphertexts (one frame each)
    chunks: list[int] = Field(max_length=1 << 16)


class JobRef(BaseModel):
    model_config = _STRICT
    job_id: JobId


class ResultRequest(BaseModel):
    """``he.job.result``: the key owner asks for the result, waiting up to ``wait`` seconds.

    The reply carries the result chunks from ``first`` on, at most
    ``RESULT_FRAMES`` of them (the node's frame limit); the owner asks again
    for the rest.
    """

    model_config = _STRICT
    job_id: JobId
    wait: float = Field(default=0.0, ge=0, le=300)
    first: int = Field(default=0, ge=0, lt=1 << 16)


class Contribution(BaseModel):
    """``he.contribute``: chunks ``first``.. of the sender's contribution (frames in order).

    A contribution of many chunks travels in several messages (each within the
    frame limit, in any order, each chunk once); it counts once every chunk
    has arrived.
    """

    model_config = _STRICT
    job_id: JobId
    context_digest: Hex32
    weight: PositiveFloat = 1.0
    first: int = Field(ge=0, lt=1 << 16)


class Accepted(BaseModel):
    """The reply to a contribution part: chunks received so far, and whether it is complete."""

    model_config = _STRICT
    job_id: JobId
    received: int
    complete: bool


class JobResult(BaseModel):
    """``he.job.result`` reply; when ``state`` is ``done`` the frames are result chunks
    ``first``.. (``chunks`` in all)."""

    model_config = _STRICT
    job_id: JobId
    state: State
    count: int
    weight_sum: float
    contributors: list[NodeIdStr] = Field(max_length=MAX_CONTRIBUTORS)
    rejected: dict[NodeIdStr, str] = Field(default_factory=dict)
    dropped: list[NodeIdStr] = Field(default_factory=list, max_length=MAX_CONTRIBUTORS)
    error: str = ""
    first: int = 0
    chunks: int = 0


class ContextRef(BaseModel):
    """``he.score.context`` body (the preset of the context frame) and its reply (the digest)."""

    model_config = _STRICT
    preset: PresetName
    context_digest: Hex32 | None = None


class ScoreRequest(BaseModel):
    """``he.score``: score the input chunks (frames) under ``model``; reply: one ciphertext."""

    model_config = _STRICT
    model: ModelName
    context_digest: Hex32
    length: int = Field(ge=1, le=MAX_LENGTH)
