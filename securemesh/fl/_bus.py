"""The FL messages on the bus: bodies (strict pydantic) and their types.

``fl.join`` (device -> coordinator, REQUEST): the device's per-federation
Ed25519 key for the protocol's own signatures, and its sample count. The
envelope is signed by the device's identity, so the binding key -> node id is
authenticated by the bus. ``fl.round_finished`` (coordinator -> device): one round's
parameters, the cohort's protocol keys, and the global parameters as a raw
frame (little-endian float64). ``fl.secagg`` (both ways): one secure-
aggregation frame (:mod:`securemesh.fl._messages`) as a raw frame.
``fl.run`` / ``fl.status`` (REQUEST, to the coordinator): start rounds,
report progress.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

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
]

MSG_HE_ROUND = "fl.he_round"
MSG_JOIN = "fl.join"
MSG_ROUND = "fl.round_finished"
MSG_SECAGG = "fl.secagg"
MSG_RUN = "fl.run"
MSG_STATUS = "fl.status"

Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Hex16 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
NodeId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class JoinBody(_Strict):
    key: Hex32
    samples: int = Field(ge=1, le=1_000_000_000)


class RoundBody(_Strict):
    round: int = Field(ge=1)
    round_id: Hex16
    graph_seed: Hex32
    cohort: list[NodeId] = Field(min_length=2, max_length=10_000)
    keys: dict[NodeId, Hex32]
    length: int = Field(ge=1, le=1 << 24)
    bits: int = Field(ge=8, le=62)
    degree: int = Field(ge=1)
    threshold: int = Field(ge=1)
    stage_timeout: float = Field(gt=0, le=3600)
    clip: float = Field(gt=0)
    levels: int = Field(ge=1)
    max_clients: int = Field(ge=1)
    max_weight: int = Field(ge=1)
    # client-level DP (securemesh.fl._dp): both set, or neither
    dp_clip: float | None = Field(default=None, gt=0, le=1e6)
    noise_multiplier: float | None = Field(default=None, gt=0, le=1e6)

    @model_validator(mode="after")
    def _dp_pair(self) -> RoundBody:
        if (self.dp_clip is None) != (self.noise_multiplier is None):
            raise ValueError("dp_clip and noise_multiplier go together")
        return self


class RunBody(_Strict):
    rounds: int = Field(ge=1, le=10_000)
    clients_per_round: int = Field(ge=2, le=10_000)
    mode: Literal["secagg", "plain", "he"] = "secagg"
    clip: float = Field(default=1.0, gt=0)
    stage_timeout: float = Field(default=10.0, gt=0, le=3600)
    # client-level DP: each participant clips its update to L2 norm dp_clip and adds
    # its share of N(0, (noise_multiplier * dp_clip)^2); the coordinator reports epsilon
    dp_clip: float | None = Field(default=None, gt=0, le=1e6)
    noise_multiplier: float | None = Field(default=None, gt=0, le=1e6)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    # mode "he": the node running securemesh.he's service that adds the ciphertexts,
    # its CKKS preset, and the largest sample count a device may weight its update by
    aggregator: NodeId | None = None
    preset: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,32}$")] = "standard-8192"
    max_weight: int = Field(default=1000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _dp_pair(self) -> RunBody:
        if (self.dp_clip is None) != (self.noise_multiplier is None):
            raise ValueError("dp_clip and noise_multiplier go together")
        if (self.mode == "he") != (self.aggregator is not None):
            raise ValueError("mode 'he' and an aggregator go together")
        return self


class HERoundBody(_Strict):
    """``fl.he_round`` (coordinator -> device): an ``he`` round. The device encrypts
    ``[n·clip(Δ) ‖ n]`` for HE job ``job_id`` at ``aggregator`` (securemesh.he)."""

    round: int = Field(ge=1)
    cohort: list[NodeId] = Field(min_length=2, max_length=10_000)
    job_id: Hex16
    aggregator: NodeId
    length: int = Field(ge=2, le=1 << 24)  # parameters + 1 (the weight)
    clip: float = Field(gt=0)
    max_weight: int = Field(ge=1)
    dp_clip: float | None = Field(default=None, gt=0, le=1e6)
    noise_multiplier: float | None = Field(default=None, gt=0, le=1e6)

    @model_validator(mode="after")
    def _dp_pair(self) -> HERoundBody:
        if (self.dp_clip is None) != (self.noise_multiplier is None):
            raise ValueError("dp_clip and noise_multiplier go together")
        return self
