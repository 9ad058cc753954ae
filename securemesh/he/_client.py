"""The library API over a node's requests: the key owner's jobs and a contributor's inputs.

Both run over anything with the node's ``request`` coroutine (a service's
:class:`~securemesh.node.NodeContext`, a :class:`~securemesh.node.MeshNode`,
or a device through :func:`securemesh.sdk.he_requester`)::

    owner = KeyOwner(ctx, aggregator="edge-1")
    job = await owner.create_job("mean", length=96, max_contributors=20, timeout=60)
    ...                                   # contributors: await contribute(ctx, "edge-1", job.id, x)
    result = await owner.result(job, wait=90)
    result.mean                           # the mean vector, within result.error_bound

:func:`encrypted_weighted_sum` is the one call a federated-learning
coordinator needs: a weighted sum of every contributor's vector for a job,
decrypted only by the key owner that calls it.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pydantic import BaseModel

from securemesh.errors import DecodeError, LocalError
from securemesh.he._ckks import SecretContext, encrypt_vector, load_public_context
from securemesh.he._messages import (
    MSG_CONTRIBUTE,
    MSG_CREATE,
    MSG_GET,
    MSG_RESULT,
    MSG_SCORE,
    MSG_SCORE_CONTEXT,
    Accepted,
    ContextRef,
    Contribution,
    JobInfo,
    JobRef,
    JobResult,
    JobSpec,
    Operation,
    ResultRequest,
    ScoreRequest,
)
from securemesh.he._params import Preset, get_preset
from securemesh.node import VerifiedMessage

__all__ = [
    "FRAMES_PER_MESSAGE",
    "HeJob",
    "HeResult",
    "KeyOwner",
    "Requester",
    "contribute",
    "encrypted_weighted_sum",
    "fetch_job",
    "score_remote",
    "send_chunks",
]

#: Chunk frames per ``he.contribute`` message (the default node limit is 16 frames).
FRAMES_PER_MESSAGE = 8


class Requester(Protocol):
    """Anything that sends a REQUEST and returns the verified REPLY (a NodeContext, ...)."""

    async def request(
        self,
        dest: str,
        msg_type: str,
        body: BaseModel | bytes,
        frames: Sequence[bytes | memoryview] = (),
        *,
        timeout: float | None = None,
    ) -> VerifiedMessage: ...


@dataclass
class HeJob:
    """A job the key owner created: its description and the secret context (kept here)."""

    info: JobInfo
    secret: SecretContext

    @property
    def id(self) -> str:
        return self.info.job_id


@dataclass(frozen=True)
class HeResult:
    """A decrypted job result. ``total`` is Σ wᵢxᵢ; ``mean``/``variance`` per coordinate.

    Every value of ``total`` is within ``error_bound`` of the plaintext
    computation (:meth:`Preset.error_bound`); ``mean`` within
    ``error_bound / weight_sum``.
    """

    job_id: str
    op: str
    total: np.ndarray
    mean: np.ndarray
    variance: np.ndarray | None
    count: int
    weight_sum: float
    contributors: list[str]
    rejected: dict[str, str]
    dropped: list[str]
    error_bound: float


class KeyOwner:
    """A key owner (``he-keyholder`` role): creates jobs, receives and decrypts results."""

    def __init__(
        self, requester: Requester, *, aggregator: str, request_timeout: float = 60.0
    ) -> None:
        self.requester = requester
        self.aggregator = aggregator
        self.request_timeout = request_timeout

    async def create_job(
        self,
        op: Operation,
        *,
        length: int,
        max_contributors: int,
        timeout: float,
        preset: str | Preset = "standard-8192",
        min_contributors: int = 2,
        weighted: bool = False,
        max_weight: float = 1.0,
        max_abs_value: float = 1.0,
        precision: float | None = None,
        contributors: Sequence[str] = (),
        job_id: str | None = None,
    ) -> HeJob:
        """Create a job at the aggregator; it collects for at most ``timeout`` seconds.

        ``precision`` defaults to the preset's bound for the job (checked again
        by the aggregator); the secret key never leaves this object.
        """
        p = preset if isinstance(preset, Preset) else get_preset(preset)
        p.check_job(
            precision=math.inf if precision is None else precision,
            max_contributors=max_contributors,
            max_abs_value=max_abs_value,
            max_weight=max_weight if weighted else None,
            squares=op == "stats",
        )
        if precision is None:
            bound = p.error_bound(
                max_contributors, max_contributors * max_weight if weighted else None
            )
            precision = bound
        # key generation takes 0.1-1 s of CPU: off the event loop, which keeps serving
        # (the FL coordinator runs an ``he`` round's job from its loop)
        secret = await asyncio.to_thread(SecretContext, p)
        spec = JobSpec(
            job_id=job_id or os.urandom(16).hex(),
            op=op,
            preset=p.name,
            length=length,
            weighted=weighted,
            max_weight=max_weight,
            max_abs_value=max_abs_value,
            precision=precision,
            min_contributors=min_contributors,
            max_contributors=max_contributors,
            deadline=time.time() + timeout,
            contributors=list(contributors),
        )
        reply = await self.requester.request(
            self.aggregator,
            MSG_CREATE,
            spec,
            [secret.public_bytes()],
            timeout=self.request_timeout,
        )
        info = reply.body(JobInfo)
        if info.context_digest != secret.public.digest or info.job_id != spec.job_id:
            raise DecodeError("the aggregator describes another job or context")
        return HeJob(info=info, secret=secret)

    async def poll(self, job: HeJob, *, wait: float = 0.0) -> tuple[JobResult, list[bytes]]:
        """The job's state at the aggregator (waiting up to ``wait`` s for it to finish),
        and, once it is done, every result chunk (fetched in as many replies as needed)."""
        reply = await self.requester.request(
            self.aggregator,
            MSG_RESULT,
            ResultRequest(job_id=job.id, wait=wait),
            timeout=wait + self.request_timeout,
        )
        status = reply.body(JobResult)
        frames = [bytes(f) for f in reply.raw_frames]
        while status.state == "done" and 0 < len(frames) < status.chunks:
            reply = await self.requester.request(
                self.aggregator,
                MSG_RESULT,
                ResultRequest(job_id=job.id, first=len(frames)),
                timeout=self.request_timeout,
            )
            part = reply.body(JobResult)
            if part.first != len(frames) or not reply.raw_frames:
                raise DecodeError("the aggregator sent result chunks out of order")
            frames.extend(bytes(f) for f in reply.raw_frames)
        return status, frames

    async def result(self, job: HeJob, *, wait: float = 300.0) -> HeResult:
        """Wait for the result, decrypt it; LocalError if the job failed or is not done."""
        deadline = time.monotonic() + wait
        while True:
            left = max(0.0, deadline - time.monotonic())
            status, frames = await self.poll(job, wait=min(left, 300.0))
            if status.state in ("done", "failed") or left <= 0:
                break
        if status.state != "done":
            raise LocalError(f"HE job {job.id} is {status.state}: {status.error or 'no result'}")
        values = await asyncio.to_thread(job.secret.decrypt, frames, job.info.chunks)
        return _interpret(job, status, values)


def _interpret(job: HeJob, status: JobResult, values: np.ndarray) -> HeResult:
    info = job.info
    preset = get_preset(info.preset)
    bound = preset.error_bound(status.count, status.weight_sum if info.weighted else None)
    w = status.weight_sum
    if info.op == "stats":
        total, squares = values[: info.length], values[info.length :]
        mean = total / w
        variance: np.ndarray | None = np.maximum(squares / w - mean**2, 0.0)
    else:
        total, mean, variance = values, values / w, None
    return HeResult(
        job_id=info.job_id,
        op=info.op,
        total=total,
        mean=mean,
        variance=variance,
        count=status.count,
        weight_sum=w,
        contributors=status.contributors,
        rejected=status.rejected,
        dropped=status.dropped,
        error_bound=bound,
    )


async def fetch_job(
    requester: Requester, aggregator: str, job_id: str, *, timeout: float = 60.0
) -> tuple[JobInfo, bytes]:
    """A job's description and its public context bytes, from the aggregator."""
    reply = await requester.request(aggregator, MSG_GET, JobRef(job_id=job_id), timeout=timeout)
    if len(reply.raw_frames) != 1:
        raise DecodeError("he.job.get carries exactly the public context")
    return reply.body(JobInfo), bytes(reply.raw_frames[0])


async def contribute(
    requester: Requester,
    aggregator: str,
    job_id: str,
    values: Sequence[float] | np.ndarray,
    *,
    weight: float = 1.0,
    timeout: float = 60.0,
    frames_per_message: int = FRAMES_PER_MESSAGE,
) -> Accepted:
    """Encrypt ``values`` under the job's public context and send them to the aggregator.

    The context is fetched and checked (it must be a public one of the job's
    preset and hash to the job's digest); ``stats`` jobs encrypt ``x ‖ x²``.
    A refusal raises :class:`~securemesh.errors.RemoteCallError` with its reason.
    """
    info, blob = await fetch_job(requester, aggregator, job_id, timeout=timeout)
    public = load_public_context(blob, get_preset(info.preset))
    if public.digest != info.context_digest:
        raise DecodeError("the job's context does not match its digest")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(x) != info.length:
        raise LocalError(f"the job takes {info.length} values, not {len(x)}")
    if info.op == "stats":
        x = np.concatenate([x, x * x])
    head = Contribution(job_id=job_id, context_digest=public.digest, weight=weight, first=0)
    # encrypt a message's worth of chunks, send it, and encrypt the next meanwhile
    slots = public.preset.slots * frames_per_message
    sends: list[asyncio.Task[Accepted]] = []
    try:
        for start in range(0, len(x), slots):
            frames = await asyncio.to_thread(encrypt_vector, public, x[start : start + slots])
            first = start // public.preset.slots
            sends.append(
                asyncio.create_task(
                    send_chunks(
                        requester,
                        aggregator,
                        head.model_copy(update={"first": first}),
                        frames,
                        timeout=timeout,
                        frames_per_message=frames_per_message,
                    )
                )
            )
        replies = [await task for task in sends]
    finally:
        for task in sends:
            task.cancel()
    done = [r for r in replies if r.complete]
    if len(done) != 1:
        raise DecodeError("the aggregator did not report the contribution complete")
    return done[0]


async def send_chunks(
    requester: Requester,
    aggregator: str,
    head: Contribution,
    frames: Sequence[bytes],
    *,
    timeout: float = 60.0,
    frames_per_message: int = FRAMES_PER_MESSAGE,
) -> Accepted:
    """Send encrypted chunk ``frames`` (from chunk ``head.first`` on) as ``he.contribute``
    parts of at most ``frames_per_message``; the last part's reply."""
    if frames_per_message < 1:
        raise LocalError("frames_per_message is at least 1")
    accepted: Accepted | None = None
    for start in range(0, len(frames), frames_per_message):
        part = head.model_copy(update={"first": head.first + start})
        reply = await requester.request(
            aggregator,
            MSG_CONTRIBUTE,
            part,
            frames[start : start + frames_per_message],
            timeout=timeout,
        )
        accepted = reply.body(Accepted)
    if accepted is None:
        raise LocalError("nothing to send")
    return accepted


async def encrypted_weighted_sum(
    owner: KeyOwner,
    *,
    length: int,
    contributors: Sequence[str],
    timeout: float,
    ready: Callable[[HeJob], Awaitable[None]],
    max_weight: float = 1.0,
    max_abs_value: float = 1.0,
    preset: str = "standard-8192",
    min_contributors: int = 2,
) -> HeResult:
    """The encrypted weighted sum ``Σ wᵢxᵢ`` of ``contributors``' vectors, decrypted here.

    Creates a weighted ``sum`` job at ``owner.aggregator`` for exactly
    ``contributors``, awaits ``ready(job)`` (where the caller tells them the job
    id, e.g. an FL round's announcement), then waits for and decrypts the
    result. Each contributor calls :func:`contribute` with its weight (at most
    ``max_weight``, e.g. its sample count).
    """
    job = await owner.create_job(
        "sum",
        length=length,
        max_contributors=len(contributors),
        timeout=timeout,
        preset=preset,
        min_contributors=min_contributors,
        weighted=True,
        max_weight=max_weight,
        max_abs_value=max_abs_value,
        contributors=contributors,
    )
    await ready(job)
    return await owner.result(job, wait=timeout + 30)


async def score_remote(
    requester: Requester,
    scorer: str,
    secret: SecretContext,
    model: str,
    values: Sequence[float] | np.ndarray,
    *,
    timeout: float = 60.0,
) -> float:
    """Score ``values`` under the scorer's ``model`` without revealing them; the plain score.

    ``secret`` must have Galois keys (``SecretContext(preset, galois_keys=True)``);
    its public context is sent first (``he.score.context``), then the input chunks.
    """
    if not secret.galois_keys:
        raise LocalError("scoring needs a SecretContext with galois_keys=True")
    reply = await requester.request(
        scorer,
        MSG_SCORE_CONTEXT,
        ContextRef(preset=secret.preset.name),
        [secret.public_bytes()],
        timeout=timeout,
    )
    digest = reply.body(ContextRef).context_digest
    if digest != secret.public.digest:
        raise DecodeError("the scorer holds another context")
    frames = encrypt_vector(secret.public, values)
    length = len(np.asarray(values).reshape(-1))
    reply = await requester.request(
        scorer,
        MSG_SCORE,
        ScoreRequest(model=model, context_digest=digest, length=length),
        frames,
        timeout=timeout,
    )
    if len(reply.raw_frames) != 1:
        raise DecodeError("a score reply carries one ciphertext")
    return float(secret.decrypt([reply.raw_frames[0]], [1])[0])
