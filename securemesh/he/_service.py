"""The HE service on the node seam: an aggregator and scorer that never holds a secret key.

Load it from ``node.toml`` (docs/he.md)::

    services = ["securemesh.he:make_service"]

    [[policy.allow]]                 # the operator's outer bound
    types = ["he.*"]
    tiers = ["end", "edge", "cloud"]

Handlers (bodies in :mod:`securemesh.he._messages`; contexts and ciphertexts are
raw frames, never JSON/base64):

* ``he.job.create`` — (senders with the ``he-keyholder`` role) a job and its
  public context frame. The context is checked structurally, loaded by TenSEAL
  defensively and refused if it holds a secret key or is not the preset's;
  the preset must meet the job's precision and magnitude
  (:meth:`Preset.check_job`). The job is audited (``he.job.created``) and,
  with ``announce`` (``SECUREMESH_HE_ANNOUNCE=1``), announced to this node's
  children (``he.job.announce`` broadcast; off by default: a child without a
  handler for it would count and audit a rejection per job).
* ``he.job.get`` — a job's description and its public context (frame).
* ``he.contribute`` — chunk frames of the sender's contribution; each is
  checked (size, structure, scale, then SEAL's own load under the job's
  context) as it arrives. A bad one rejects the sender's contribution for the
  job (``he.contribution.rejected``, reason in the reply) and the job goes on
  with the others; a complete one is added to the encrypted sum.
* ``he.job.result`` — (the job's owner only) waits for the result; when done
  the reply's frames are the encrypted result chunks.
* ``he.score.context`` / ``he.score`` — linear scoring: a public context with
  Galois keys, then ``⟨x, w⟩ + b`` of an encrypted input under a model this
  node holds in plaintext; the reply (one ciphertext) goes back to the sender,
  the input's owner, who alone can decrypt it.

A job collects until ``max_contributors`` complete contributions or its
deadline, whichever is first: a contributor that drops out never holds it
past the deadline (``he.job.dropout``). With fewer than ``min_contributors``
it fails (``he.job.failed``) rather than release a sum of too few inputs.
Bounds: ``max_jobs`` live jobs (finished ones are evicted oldest first),
``max_pending_bytes`` of chunks of incomplete contributions over all jobs,
chunk frames by the preset's size, contexts by ``MAX_CONTEXT_BYTES``, score
contexts ``max_score_contexts`` in total (two per sender). TenSEAL work runs in
worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securemesh.errors import (
    AuthorizationError,
    ConfigError,
    DecodeError,
    LocalError,
    RemoteError,
    SecureMeshError,
)
from securemesh.he._ckks import (
    EncryptedSum,
    PublicContext,
    chunk_lengths,
    load_chunk,
    load_public_context,
    score,
)
from securemesh.he._frames import ForeignCiphertext
from securemesh.he._messages import (
    MSG_ANNOUNCE,
    MSG_CONTRIBUTE,
    MSG_CREATE,
    MSG_GET,
    MSG_RESULT,
    MSG_SCORE,
    MSG_SCORE_CONTEXT,
    RESULT_FRAMES,
    Accepted,
    ContextRef,
    Contribution,
    JobInfo,
    JobRef,
    JobResult,
    JobSpec,
    ResultRequest,
    ScoreRequest,
)
from securemesh.he._params import get_preset
from securemesh.node import NodeContext, Reply, Service, VerifiedMessage
from securemesh.policy import AllowTypes

__all__ = [
    "KEYHOLDER_ROLE",
    "KIND_CONTRIBUTION",
    "KIND_CREATED",
    "KIND_DONE",
    "KIND_DROPOUT",
    "KIND_FAILED",
    "KIND_REJECTED",
    "KIND_SCORE",
    "HeService",
    "LinearModel",
    "make_service",
]

KEYHOLDER_ROLE = "he-keyholder"
KIND_CREATED = "he.job.created"
KIND_CONTRIBUTION = "he.job.contribution"
KIND_REJECTED = "he.contribution.rejected"
KIND_DROPOUT = "he.job.dropout"
KIND_DONE = "he.job.done"
KIND_FAILED = "he.job.failed"
KIND_SCORE = "he.score"
#: Longest a job may run (its deadline from creation), seconds.
MAX_JOB_SECONDS = 86_400.0


class UnknownJob(RemoteError):
    reason = "unknown_job"


class JobClosed(RemoteError):
    reason = "job_closed"


class Busy(RemoteError):
    reason = "busy"


def _with_detail(
    handler: Callable[[VerifiedMessage], Awaitable[object]],
) -> Callable[[VerifiedMessage], Awaitable[object]]:
    """The handler, its refusals carrying their text to the peer (``mesh.error`` detail).

    Every text this service raises names sizes, fields or states, never an input value.
    """

    async def run(msg: VerifiedMessage) -> object:
        try:
            return await handler(msg)
        except RemoteError as exc:
            if not exc.public_detail:
                exc.public_detail = str(exc)[:200]
            raise

    return run


@dataclass(frozen=True)
class LinearModel:
    """A plaintext linear model this node scores encrypted inputs with: ``⟨x, w⟩ + bias``."""

    weights: np.ndarray
    bias: float = 0.0


class _Pending:
    """One sender's contribution while its parts arrive (chunks by index)."""

    def __init__(self, count: int, weight: float) -> None:
        self.chunks: list[Any] = [None] * count
        self.claimed = [False] * count
        self.filled = 0
        self.nbytes = 0
        self.weight = weight


class _Job:
    def __init__(self, spec: JobSpec, owner: str, aggregator: str, public: PublicContext) -> None:
        self.spec = spec
        self.owner = owner
        self.public = public
        encrypted = spec.length * (2 if spec.op == "stats" else 1)
        self.lengths = chunk_lengths(encrypted, public.preset.slots)
        self.info = JobInfo(
            job_id=spec.job_id,
            op=spec.op,
            preset=spec.preset,
            length=spec.length,
            weighted=spec.weighted,
            max_weight=spec.max_weight,
            owner=owner,
            aggregator=aggregator,
            deadline=spec.deadline,
            min_contributors=spec.min_contributors,
            max_contributors=spec.max_contributors,
            context_digest=public.digest,
            state="collecting",
            encrypted_length=encrypted,
            chunks=self.lengths,
        )
        self.acc = EncryptedSum(public, self.lengths, weighted=spec.weighted)
        self.allowed = frozenset(spec.contributors)
        self.pending: dict[str, _Pending] = {}
        self.contributors: list[str] = []
        self.rejected: dict[str, str] = {}
        self.dropped: list[str] = []
        self.full = asyncio.Event()
        self.finished = asyncio.Event()
        self.adding: set[asyncio.Future[None]] = set()
        self.result: list[bytes] = []
        self.error = ""

    @property
    def state(self) -> str:
        return self.info.state

    def set_state(self, state: str) -> None:
        self.info = self.info.model_copy(update={"state": state})

    def result_body(self) -> JobResult:
        return JobResult(
            job_id=self.spec.job_id,
            state=self.info.state,
            count=self.acc.count,
            weight_sum=self.acc.weight_sum,
            contributors=list(self.contributors),
            rejected=dict(self.rejected),
            dropped=list(self.dropped),
            error=self.error,
        )


class HeService(Service):
    """HE jobs (aggregation, statistics) and linear scoring on public contexts (module doc)."""

    name = "he"
    audit_kinds = (
        KIND_CREATED,
        KIND_CONTRIBUTION,
        KIND_REJECTED,
        KIND_DROPOUT,
        KIND_DONE,
        KIND_FAILED,
        KIND_SCORE,
    )

    def __init__(
        self,
        *,
        tiers: Iterable[str] = ("end", "edge", "cloud"),
        models: Mapping[str, LinearModel] | None = None,
        max_jobs: int = 64,
        max_pending_bytes: int = 1 << 30,
        max_score_contexts: int = 16,
        announce: bool = False,
    ) -> None:
        if max_jobs < 1 or max_pending_bytes < 1 or max_score_contexts < 1:
            raise LocalError("HE service bounds are positive")
        self.tiers = list(tiers)
        self.models = dict(models or {})
        self.max_jobs = max_jobs
        self.max_pending_bytes = max_pending_bytes
        self.max_score_contexts = max_score_contexts
        self.announce = announce
        self.jobs: OrderedDict[str, _Job] = OrderedDict()
        self.pending_bytes = 0
        self._score_contexts: OrderedDict[tuple[str, str], PublicContext] = OrderedDict()
        self._ctx: NodeContext | None = None
        self.counters: dict[str, int] = {
            "jobs_created": 0,
            "jobs_done": 0,
            "jobs_failed": 0,
            "contributions": 0,
            "rejected": 0,
            "dropouts": 0,
            "scores": 0,
            "busy": 0,
        }

    # ------------------------------------------------------------------ seam

    @property
    def ctx(self) -> NodeContext:
        if self._ctx is None:
            raise LocalError("the HE service is not installed")
        return self._ctx

    def install(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        handlers: Mapping[str, Callable[[VerifiedMessage], Awaitable[object]]] = {
            MSG_CREATE: self._create,
            MSG_GET: self._get,
            MSG_CONTRIBUTE: self._contribute,
            MSG_RESULT: self._result,
            MSG_SCORE_CONTEXT: self._score_context,
            MSG_SCORE: self._score,
        }
        for msg_type, handler in handlers.items():
            roles = [KEYHOLDER_ROLE] if msg_type == MSG_CREATE else None
            policy = AllowTypes(types=[msg_type], tiers=self.tiers, roles=roles)
            ctx.on(msg_type, _with_detail(handler), policy=policy, relay_policy=policy)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for job in self.jobs.values():
            job.finished.set()

    def status(self) -> Mapping[str, object]:
        return {
            **self.counters,
            "jobs": {job_id: job.state for job_id, job in self.jobs.items()},
            "pending_bytes": self.pending_bytes,
            "models": sorted(self.models),
        }

    # --------------------------------------------------------------- helpers

    def _job(self, job_id: str) -> _Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise UnknownJob("no such HE job here")
        return job

    def _evict(self) -> None:
        while len(self.jobs) >= self.max_jobs:
            for job_id, job in self.jobs.items():
                if job.finished.is_set():
                    del self.jobs[job_id]
                    break
            else:
                self.counters["busy"] += 1
                raise Busy("this node runs its maximum of HE jobs")

    def _drop_pending(self, job: _Job, sender: str) -> None:
        pending = job.pending.pop(sender, None)
        if pending is not None:
            self.pending_bytes -= pending.nbytes

    def _reject(self, job: _Job, sender: str, exc: RemoteError) -> None:
        self._drop_pending(job, sender)
        job.rejected[sender] = exc.reason
        self.counters["rejected"] += 1
        self.ctx.audit.record(
            KIND_REJECTED,
            ("task", job.spec.job_id),
            outcome="denied",
            details={"from": sender, "reason": exc.reason, "error": str(exc)[:200]},
        )

    # -------------------------------------------------------------- handlers

    async def _create(self, msg: VerifiedMessage) -> JobInfo:
        spec = msg.body(JobSpec)
        if len(msg.raw_frames) != 1:
            raise DecodeError("he.job.create carries exactly the public context frame")
        if spec.job_id in self.jobs:
            raise DecodeError("a job with this id exists")
        now = self.ctx.clock()
        if not now < spec.deadline <= now + MAX_JOB_SECONDS:
            raise DecodeError("the deadline is in the past or more than a day ahead")
        if spec.min_contributors > spec.max_contributors:
            raise DecodeError("min_contributors exceeds max_contributors")
        try:
            preset = get_preset(spec.preset)
            preset.check_job(
                precision=spec.precision,
                max_contributors=spec.max_contributors,
                max_abs_value=spec.max_abs_value,
                max_weight=spec.max_weight if spec.weighted else None,
                squares=spec.op == "stats",
            )
        except ConfigError as exc:
            raise DecodeError(str(exc)) from exc
        frame = msg.raw_frames[0]
        public = await asyncio.to_thread(load_public_context, frame, preset)
        self._evict()
        # kept for inspection: the exact bytes this node received (never a secret key)
        jobs_dir = self.ctx.data_dir / "jobs"
        await asyncio.to_thread(_write_context, jobs_dir, spec.job_id, public.blob)
        job = _Job(spec, msg.sender, self.ctx.node_id, public)
        self.jobs[spec.job_id] = job
        self.counters["jobs_created"] += 1
        self.ctx.audit.record(
            KIND_CREATED,
            ("task", spec.job_id),
            details={
                "owner": msg.sender,
                "op": spec.op,
                "preset": spec.preset,
                "length": spec.length,
                "context_digest": public.digest,
                "galois_keys": public.has_galois_keys,
                "max_contributors": spec.max_contributors,
                "deadline": spec.deadline,
            },
        )
        self.ctx.spawn(self._run(job), name=f"job-{spec.job_id[:8]}")
        if self.announce:
            # announcing is a courtesy; contributors may also ask he.job.get
            with contextlib.suppress(SecureMeshError):
                await self.ctx.broadcast(MSG_ANNOUNCE, job.info)
        return job.info

    async def _get(self, msg: VerifiedMessage) -> Reply:
        job = self._job(msg.body(JobRef).job_id)
        return Reply(job.info, frames=[job.public.blob])

    def _claim_part(
        self, job: _Job, body: Contribution, sender: str, frames: tuple[memoryview, ...]
    ) -> tuple[_Pending, list[int], int]:
        """Claim chunks ``first``.. of the sender's contribution for this part (before any
        await, so parts may arrive and load concurrently, each chunk once); its lengths
        and bytes (counted as pending until the contribution completes or is dropped)."""
        if body.context_digest != job.public.digest:
            raise ForeignCiphertext("the contribution is for another context than the job's")
        if job.spec.weighted:
            if body.weight > job.spec.max_weight:
                raise DecodeError("the weight exceeds the job's max_weight")
        elif body.weight != 1.0:
            raise DecodeError("the job is unweighted: the weight is 1")
        pending = job.pending.get(sender)
        if pending is not None and body.weight != pending.weight:
            raise DecodeError("every part of a contribution has the same weight")
        end = body.first + len(frames)
        if not frames or end > len(job.lengths):
            raise DecodeError(f"chunks {body.first}..{end - 1}: the job has {len(job.lengths)}")
        if pending is not None and any(pending.claimed[body.first : end]):
            raise DecodeError("a chunk of this contribution was sent twice")
        size = sum(f.nbytes for f in frames)
        if self.pending_bytes + size > self.max_pending_bytes:
            self.counters["busy"] += 1
            raise Busy("too many pending contribution bytes on this node; retry later")
        if pending is None:
            pending = job.pending[sender] = _Pending(len(job.lengths), body.weight)
        pending.claimed[body.first : end] = [True] * len(frames)
        pending.nbytes += size
        self.pending_bytes += size
        return pending, job.lengths[body.first : end], size

    async def _contribute(self, msg: VerifiedMessage) -> Accepted:
        body = msg.body(Contribution)
        job = self._job(body.job_id)
        sender = msg.sender
        if job.state != "collecting" or self.ctx.clock() >= job.spec.deadline:
            raise JobClosed("the job no longer collects contributions")
        if job.allowed and sender not in job.allowed:
            raise AuthorizationError("not a contributor of this job")
        if sender in job.rejected:
            raise DecodeError("this node's contribution to the job was rejected")
        if sender in job.contributors:
            raise DecodeError("this node has already contributed to the job")
        frames = msg.raw_frames
        try:
            pending, lengths, _ = self._claim_part(job, body, sender, frames)
            preset = job.public.preset
            ctx_ts = job.public.ts
            loaded = await asyncio.to_thread(
                lambda: [
                    load_chunk(ctx_ts, preset, f, n) for f, n in zip(frames, lengths, strict=True)
                ]
            )
        except Busy:
            raise
        except RemoteError as exc:
            if sender not in job.rejected:
                self._reject(job, sender, exc)
            raise
        if job.pending.get(sender) is not pending:  # rejected, dropped or closed meanwhile
            raise JobClosed("this contribution is no longer pending")
        pending.chunks[body.first : body.first + len(loaded)] = loaded
        pending.filled += len(loaded)
        complete = pending.filled == len(job.lengths)
        if complete:
            self._drop_pending(job, sender)
            job.contributors.append(sender)  # before the await: no second completion
            adding = asyncio.ensure_future(
                asyncio.to_thread(job.acc.add, pending.chunks, pending.weight)
            )
            job.adding.add(adding)
            try:
                await adding
            except RemoteError as exc:
                job.contributors.remove(sender)
                self._reject(job, sender, exc)
                raise
            finally:
                job.adding.discard(adding)
            self.counters["contributions"] += 1
            self.ctx.audit.record(
                KIND_CONTRIBUTION,
                ("task", job.spec.job_id),
                details={"from": sender, "weight": pending.weight},
            )
            if len(job.contributors) >= job.spec.max_contributors:
                job.full.set()
        return Accepted(job_id=job.spec.job_id, received=pending.filled, complete=complete)

    async def _run(self, job: _Job) -> None:
        """Collect until full or the deadline, then compute the result (or fail)."""
        wait = max(0.0, job.spec.deadline - self.ctx.clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.full.wait(), timeout=wait)
        job.set_state("computing")
        for sender in list(job.pending):
            self._drop_pending(job, sender)
            job.dropped.append(sender)
            self.counters["dropouts"] += 1
            self.ctx.audit.record(
                KIND_DROPOUT, ("task", job.spec.job_id), outcome="failure", details={"from": sender}
            )
        # contributions completing right now are being added in threads: let them finish
        if job.adding:
            await asyncio.gather(*job.adding, return_exceptions=True)
        if job.acc.count < job.spec.min_contributors:
            job.error = (
                f"{job.acc.count} complete contributions, the job needs {job.spec.min_contributors}"
            )
            job.set_state("failed")
            self.counters["jobs_failed"] += 1
            self.ctx.audit.record(
                KIND_FAILED,
                ("task", job.spec.job_id),
                outcome="failure",
                details={"owner": job.owner, "error": job.error},
            )
        else:
            try:
                job.result = await asyncio.to_thread(job.acc.result_frames)
            except Exception as exc:  # never leave the owner waiting on a crashed job
                job.error = f"the result could not be serialized: {type(exc).__name__}"
                job.set_state("failed")
                job.finished.set()
                raise
            digest = hashlib.sha256(b"".join(job.result)).hexdigest()
            job.set_state("done")
            self.counters["jobs_done"] += 1
            self.ctx.audit.record(
                KIND_DONE,
                ("task", job.spec.job_id),
                details={
                    "owner": job.owner,
                    "count": job.acc.count,
                    "weight_sum": job.acc.weight_sum,
                    "rejected": len(job.rejected),
                    "dropped": len(job.dropped),
                    "result_sha256": digest,
                },
            )
        job.finished.set()

    async def _result(self, msg: VerifiedMessage) -> Reply:
        body = msg.body(ResultRequest)
        job = self._job(body.job_id)
        if msg.sender != job.owner:
            raise AuthorizationError("only the job's key owner receives its result")
        if body.wait > 0 and not job.finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.finished.wait(), timeout=body.wait)
        if job.state != "done":
            return Reply(job.result_body())
        if body.first >= len(job.result):
            raise DecodeError(f"the result has {len(job.result)} chunks")
        frames = job.result[body.first : body.first + RESULT_FRAMES]
        reply = job.result_body().model_copy(
            update={"first": body.first, "chunks": len(job.result)}
        )
        return Reply(reply, frames=frames)

    # ----------------------------------------------------------------- scoring

    async def _score_context(self, msg: VerifiedMessage) -> ContextRef:
        body = msg.body(ContextRef)
        if len(msg.raw_frames) != 1:
            raise DecodeError("he.score.context carries exactly the public context frame")
        try:
            preset = get_preset(body.preset)
        except ConfigError as exc:
            raise DecodeError(str(exc)) from exc
        public = await asyncio.to_thread(load_public_context, msg.raw_frames[0], preset)
        if not public.has_galois_keys:
            raise DecodeError("scoring needs a public context with Galois keys")
        key = (msg.sender, public.digest)
        mine = [k for k in self._score_contexts if k[0] == msg.sender and k != key]
        for old in mine[:-1]:  # at most two per sender
            del self._score_contexts[old]
        self._score_contexts[key] = public
        self._score_contexts.move_to_end(key)
        while len(self._score_contexts) > self.max_score_contexts:
            self._score_contexts.popitem(last=False)
        return ContextRef(preset=body.preset, context_digest=public.digest)

    async def _score(self, msg: VerifiedMessage) -> Reply:
        body = msg.body(ScoreRequest)
        model = self.models.get(body.model)
        if model is None:
            raise DecodeError(f"no model {body.model!r} on this node")
        public = self._score_contexts.get((msg.sender, body.context_digest))
        if public is None:
            raise UnknownJob("unknown scoring context: send he.score.context first")
        lengths = chunk_lengths(body.length, public.preset.slots)
        if len(msg.raw_frames) != len(lengths):
            raise DecodeError(f"{len(msg.raw_frames)} chunks, the input needs {len(lengths)}")
        frames = msg.raw_frames
        try:
            result = await asyncio.to_thread(
                score, public, frames, lengths, model.weights, model.bias
            )
        except RemoteError as exc:
            self.ctx.audit.record(
                KIND_SCORE,
                ("node", self.ctx.node_id),
                outcome="denied",
                details={"from": msg.sender, "model": body.model, "reason": exc.reason},
            )
            raise
        self.counters["scores"] += 1
        self.ctx.audit.record(
            KIND_SCORE,
            ("node", self.ctx.node_id),
            details={"from": msg.sender, "model": body.model, "length": body.length},
        )
        return Reply(ContextRef(preset=public.preset.name), frames=[result])


def _write_context(jobs_dir: Path, job_id: str, blob: bytes) -> None:
    jobs_dir.mkdir(mode=0o700, exist_ok=True)
    files = sorted(jobs_dir.glob("*.context"), key=lambda p: p.stat().st_mtime)
    for old in files[: max(0, len(files) - 63)]:  # the last 64 jobs' contexts
        old.unlink(missing_ok=True)
    (jobs_dir / f"{job_id}.context").write_bytes(blob)


def load_models(path: Path) -> dict[str, LinearModel]:
    """Linear models from a JSON file ``{"name": {"weights": [...], "bias": b}}``."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read HE models from {path}: {exc}") from exc
    if not isinstance(raw, dict) or len(raw) > 256:
        raise ConfigError(f"{path}: an object of at most 256 models")
    models: dict[str, LinearModel] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("weights"), list):
            raise ConfigError(f"{path}: model {name!r} needs a list of weights")
        weights = np.asarray(entry["weights"], dtype=np.float64)
        bias = float(entry.get("bias", 0.0))
        if weights.ndim != 1 or not weights.size or not np.all(np.isfinite(weights)):
            raise ConfigError(f"{path}: model {name!r} weights are finite numbers")
        if not math.isfinite(bias):
            raise ConfigError(f"{path}: model {name!r} bias is a finite number")
        models[str(name)] = LinearModel(weights=weights, bias=bias)
    return models


def make_service() -> HeService:
    """The ``node.toml`` factory; ``SECUREMESH_HE_MODELS`` names a JSON file of linear models,
    ``SECUREMESH_HE_ANNOUNCE=1`` broadcasts each new job to the node's children."""
    path = os.environ.get("SECUREMESH_HE_MODELS")
    announce = os.environ.get("SECUREMESH_HE_ANNOUNCE", "0") == "1"
    return HeService(models=load_models(Path(path)) if path else None, announce=announce)
