"""The FL coordinator: a ``Service`` on a cloud or edge node (docs/federated-learning.md §5).

Devices join with ``fl.join`` (their per-federation protocol key, signed by
the bus envelope); an operator or an authorized device starts rounds with
``fl.run``. Each round the coordinator picks the cohort among the joined
devices (``ctx.rng``), announces the round (``fl.round_finished``: parameters, the
cohort's keys, the global model), and drives a
:class:`~securemesh.fl.SecAggServer` with the ``fl.secagg`` frames it
receives and its own clock (``ctx.clock``): every stage has its deadline, a
silent device is dropped, a round below threshold aborts. The new global
model's SHA-256, the participants and the survivors are audited
(``fl.round_finished``); exclusions and aborts too.

Bounded: at most ``max_participants`` joined devices (a re-join replaces the
key); one round at a time; per device one frame per stage (the server state
machine excludes a second); frames over the size limit are refused by the
bus limits and by the frame decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

import numpy as np

from securemesh.errors import DecodeError, LocalError, SecureMeshError
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
from securemesh.fl._config import SecAggConfig
from securemesh.fl._dp import ClientDP, round_noise_ok
from securemesh.fl._federation import AUDIT_KINDS, id_list, model_hash, round_details
from securemesh.fl._quant import Quantizer
from securemesh.fl._secagg import SecAggServer
from securemesh.node import NodeContext, Service, VerifiedMessage
from securemesh.policy import AllowTypes

__all__ = ["FLCoordinator"]

_TICK = 0.1
_MAX_WEIGHT = 100_000
#: the role a device needs to start a federation run (``fl.run``)
RUN_ROLE = "fl-operator"


def _json(value: dict[str, object]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class FLCoordinator(Service):
    """``services = ["securemesh.fl:FLCoordinator"]`` in ``node.toml``."""

    name = "fl"
    audit_kinds = AUDIT_KINDS

    def __init__(self, *, max_participants: int = 1000, bits: int = 32) -> None:
        self.max_participants = max_participants
        self.bits = bits
        self._joined: dict[str, tuple[bytes, int]] = {}
        self._server: SecAggServer | None = None
        self._wake = asyncio.Event()
        self._running = False
        self.params: np.ndarray | None = None
        self.history: list[dict[str, Any]] = []
        self.rejected = 0
        self.send_failures = 0
        self._dp: ClientDP | None = None
        self._dp_rounds = 0  # rounds whose noisy sum was released under the current DP run

    def install(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        end = AllowTypes(types=[MSG_JOIN, MSG_SECAGG, MSG_STATUS], tiers=["end"])
        # starting a run (its rounds, cohort size and initial model) is an operator's act,
        # not any participant's: narrowed to the `fl-operator` role on top of [policy]
        run = AllowTypes(types=[MSG_RUN], tiers=["end"], roles=[RUN_ROLE])
        ctx.on(MSG_JOIN, self._on_join, policy=end)
        ctx.on(MSG_SECAGG, self._on_secagg, policy=end)
        ctx.on(MSG_RUN, self._on_run, policy=run)
        ctx.on(MSG_STATUS, self._on_status, policy=end)

    async def start(self) -> None:
        pass  # rounds start on fl.run

    async def stop(self) -> None:
        self._wake.set()

    def status(self) -> dict[str, object]:
        return {
            "joined": len(self._joined),
            "running": self._running,
            "rounds": len(self.history),
            "last": self.history[-1] if self.history else None,
            "epsilon": None if self._dp is None else self._epsilon(),
            "delta": None if self._dp is None else self._dp.delta,
            "stage": None if self._server is None else self._server.state.value,
            "rejected_frames": self.rejected,
            "send_failures": self.send_failures,
        }

    def _epsilon(self) -> float:
        assert self._dp is not None
        return round(self._dp.epsilon(self._dp_rounds), 4)

    # -- handlers
    def _on_join(self, msg: VerifiedMessage) -> bytes:
        body = msg.body(JoinBody)
        if msg.sender not in self._joined and len(self._joined) >= self.max_participants:
            raise LocalError("the federation is full")
        self._joined[msg.sender] = (bytes.fromhex(body.key), body.samples)
        return _json({"joined": True, "participants": len(self._joined)})

    def _on_status(self, msg: VerifiedMessage) -> bytes:
        return _json(self.status())

    def _on_run(self, msg: VerifiedMessage) -> bytes:
        body = msg.body(RunBody)
        if self._running:
            raise LocalError("a federation run is already in progress")
        frames = msg.raw_frames
        if len(frames) != 1 or len(frames[0]) % 8 or not frames[0]:
            raise DecodeError("fl.run carries the initial parameters as one float64 frame")
        if body.mode == "plain":
            raise LocalError("over the bus the modes are 'secagg' and 'he'")
        if len(self._joined) < body.clients_per_round:
            raise LocalError(
                f"only {len(self._joined)} devices joined, {body.clients_per_round} per round asked"
            )
        dp = None
        if body.dp_clip is not None and body.noise_multiplier is not None:
            dp = ClientDP(body.dp_clip, body.noise_multiplier, body.delta)
            if body.clip < body.dp_clip:
                raise LocalError("the quantizer clip must be at least dp_clip")
        self.params = np.frombuffer(bytes(frames[0]), dtype="<f8").astype(np.float64)
        self._dp, self._dp_rounds = dp, 0  # epsilon is accounted per run (one model)
        self._running = True
        self.ctx.spawn(self._run(body), name="fl-run")
        return _json(
            {"started": True, "rounds": body.rounds, "model_hash": model_hash(self.params)}
        )

    def _on_secagg(self, msg: VerifiedMessage) -> None:
        server = self._server
        frames = msg.raw_frames
        if server is None or len(frames) != 1:
            self.rejected += 1
            return
        if not server.receive(msg.sender, bytes(frames[0]), self.ctx.clock()):
            # from outside the round's cohort, an excluded client, or too late
            self.rejected += 1
        self._wake.set()

    # -- rounds
    async def _run(self, body: RunBody) -> None:
        try:
            for _ in range(body.rounds):
                if body.mode == "he":
                    await self._he_round(body)
                else:
                    await self._round(body)
        finally:
            self._running = False
            self._server = None

    async def _send(
        self, dest: str, msg_type: str, body: RoundBody | HERoundBody | bytes, frame: bytes
    ) -> None:
        """Send; a device that cannot be reached is a dropout (counted), not our failure."""
        try:
            await self.ctx.send(dest, msg_type, body, [frame])
        except SecureMeshError:
            self.send_failures += 1
            if self._server is not None:  # unreachable: a dropout now, not at the deadline
                self._server.forget(dest, self.ctx.clock())
                self._wake.set()

    async def _flush(self, server: SecAggServer) -> None:
        for client, frame in server.take_outbox():
            await self._send(client, MSG_SECAGG, b"{}", frame)

    def _cohort(self, body: RunBody) -> tuple[str, ...]:
        rnd = random.Random(self.ctx.rng(32))  # noqa: S311 - selection is not a secret
        return tuple(sorted(rnd.sample(sorted(self._joined), body.clients_per_round)))

    def _abort(self, r: int, cohort: tuple[str, ...], reason: str) -> None:
        self.history.append({"round": r, "aborted": reason[:200]})
        self.ctx.audit.record(
            "fl.round_aborted",
            ("round", str(r)),
            outcome="failure",
            details={"round": r, "participants": id_list(cohort), "reason": reason[:200]},
        )

    def _finish(
        self, r: int, mode: str, cohort: tuple[str, ...], survivors: tuple[str, ...]
    ) -> None:
        assert self.params is not None
        digest = model_hash(self.params)
        record: dict[str, Any] = {
            "round": r,
            "mode": mode,
            "participants": list(cohort),
            "survivors": list(survivors),
            "model_hash": digest,
        }
        details = round_details(r, mode, cohort, survivors, digest)
        if self._dp is not None:
            record["epsilon"] = details["epsilon"] = self._epsilon()
            record["delta"] = details["delta"] = self._dp.delta
        self.history.append(record)
        self.ctx.audit.record("fl.round_finished", ("round", str(r)), details=details)

    async def _he_round(self, body: RunBody) -> None:
        """One ``he`` round: this node is the key owner (``he-keyholder``), ``body.aggregator``
        adds the devices' ciphertexts (an unweighted ``sum`` job: each device sends
        ``[n·clip(Δ) ‖ n]``), and only the sum is decrypted here."""
        from securemesh.he import KeyOwner, get_preset  # noqa: PLC0415 - lazy: TenSEAL

        assert self.params is not None
        assert body.aggregator is not None
        r = len(self.history) + 1
        cohort = self._cohort(body)
        self.ctx.audit.record(
            "fl.round_started",
            ("round", str(r)),
            details={"round": r, "participants": id_list(cohort), "threshold": 2},
        )
        owner = KeyOwner(self.ctx, aggregator=body.aggregator, request_timeout=30.0)
        weight_cap = 1 if self._dp is not None else body.max_weight
        try:
            job = await owner.create_job(
                "sum",
                length=self.params.size + 1,
                max_contributors=len(cohort),
                min_contributors=2,
                timeout=body.stage_timeout,
                preset=body.preset,
                max_abs_value=body.clip * weight_cap,
                contributors=cohort,
            )
        except SecureMeshError as exc:  # refused (role, preset bound) or unreachable
            self._abort(r, cohort, f"the HE job could not be created: {exc}")
            return
        announce = HERoundBody(
            round=r,
            cohort=list(cohort),
            job_id=job.id,
            aggregator=body.aggregator,
            length=self.params.size + 1,
            clip=body.clip,
            max_weight=weight_cap,
            dp_clip=body.dp_clip,
            noise_multiplier=body.noise_multiplier,
        )
        frame = self.params.astype("<f8").tobytes()
        for c in cohort:
            await self._send(c, MSG_HE_ROUND, announce, frame)
        try:
            result = await owner.result(job, wait=body.stage_timeout + 30)
        except SecureMeshError as exc:  # the job failed: fewer than 2 contributions, ...
            self._abort(r, cohort, str(exc))
            return
        for client, reason in sorted(result.rejected.items()):
            self.ctx.audit.record(
                "fl.client_excluded",
                ("round", str(r)),  # the client is a detail (see _round)
                outcome="failure",
                details={
                    "round": r,
                    "client": client,
                    "stage": "encrypted",
                    "reason": reason[:200],
                    "accuser": "",
                },
            )
        survivors = tuple(sorted(result.contributors))
        count = len(survivors)
        weight = float(result.total[-1])
        bound = get_preset(body.preset).error_bound(count)
        if count < 2 or round(weight) < count or abs(weight - round(weight)) > bound:
            self._abort(r, cohort, f"the decrypted total weight {weight:.6g} is not a count")
            return
        if self._dp is not None:
            if not round_noise_ok(count, len(cohort)):
                self._abort(r, cohort, f"only {count} of {len(cohort)} noise shares arrived")
                return
            self._dp_rounds += 1
            self.params = self.params + result.total[:-1] / len(cohort)
        else:
            self.params = self.params + result.total[:-1] / round(weight)
        self._finish(r, "he", cohort, survivors)

    async def _round(self, body: RunBody) -> None:
        assert self.params is not None
        r = len(self.history) + 1
        cohort = self._cohort(body)
        keys = {c: self._joined[c][0] for c in cohort}
        quant = Quantizer.fitting(
            bits=self.bits, clip=body.clip, max_clients=len(cohort), max_weight=_MAX_WEIGHT
        )
        config = SecAggConfig(
            round_id=self.ctx.rng(16),
            cohort=cohort,
            length=quant.encoded_length(self.params.size),
            graph_seed=self.ctx.rng(32),
            bits=self.bits,
            stage_timeout=body.stage_timeout,
        )
        server = SecAggServer(config, keys, now=self.ctx.clock())
        self._server = server
        announce = RoundBody(
            round=r,
            round_id=config.round_id.hex(),
            graph_seed=config.graph_seed.hex(),
            cohort=list(cohort),
            keys={c: k.hex() for c, k in keys.items()},
            length=config.length,
            bits=config.bits,
            degree=config.k,
            threshold=config.t,
            stage_timeout=config.stage_timeout,
            clip=quant.clip,
            levels=quant.levels,
            max_clients=quant.max_clients,
            max_weight=quant.max_weight,
            dp_clip=body.dp_clip,
            noise_multiplier=body.noise_multiplier,
        )
        self.ctx.audit.record(
            "fl.round_started",
            ("round", str(r)),
            details={"round": r, "participants": id_list(cohort), "threshold": config.t},
        )
        frame = self.params.astype("<f8").tobytes()
        for c in cohort:
            await self._send(c, MSG_ROUND, announce, frame)
        while not server.finished:
            self._wake.clear()
            await self._flush(server)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _TICK)
            server.tick(self.ctx.clock())
        await self._flush(server)
        for ex in server.take_exclusions():
            # The subject is the round, the client a detail: the cloud admits a service's
            # events from an edge only about the edge itself or non-node subjects
            # (audit/admission.py SERVICE_SCOPE), so a ("node", client) subject was
            # refused there and no exclusion ever reached the log.
            self.ctx.audit.record(
                "fl.client_excluded",
                ("round", str(r)),
                outcome="failure",
                details={
                    "round": r,
                    "client": ex.client,
                    "stage": ex.stage,
                    "reason": ex.reason[:200],
                    "accuser": ex.accuser or "",
                },
            )
        result, reason = server.result, server.abort_reason or "aborted"
        survivors = len(server.survivors)
        if (
            result is not None
            and self._dp is not None
            and not round_noise_ok(survivors, len(cohort))
        ):  # with DP, a dropout means less noise than accounted: do not release the sum
            result, reason = None, f"only {survivors} of {len(cohort)} noise shares arrived"
        if result is None:
            self._abort(r, cohort, reason)
            return
        mean, weight = quant.decode_mean(result)
        if self._dp is not None:
            mean = mean * weight / len(cohort)  # fixed denominator m (DP-FedAvg)
            self._dp_rounds += 1
        self.params = self.params + mean
        self._finish(r, "secagg", cohort, server.survivors)
