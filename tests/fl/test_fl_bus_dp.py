"""FL over the bus without daemons: the DP and he bodies, and a device's DP update."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from securemesh.fl import HERoundBody, Participant, RoundBody, RunBody

DP = {"dp_clip": 0.5, "noise_multiplier": 2.0}
DP_TINY = {"dp_clip": 0.5, "noise_multiplier": 1e-9}
COHORT = ["edge-a.d0", "edge-a.d1", "edge-a.d2", "edge-a.d3"]


def _round(**dp: float) -> RoundBody:
    return RoundBody(
        round=1, round_id="00" * 16, graph_seed="11" * 32, cohort=COHORT,
        keys=dict.fromkeys(COHORT, "22" * 32), length=11, bits=32, degree=3, threshold=3,
        stage_timeout=4.0, clip=4.0, levels=1000, max_clients=4, max_weight=100_000, **dp,
    )  # fmt: skip


def _participant() -> Participant:
    return Participant("edge-a.d0", lambda p: (p, 1), lambda *_: None, samples=60)


def test_dp_parameters_go_together_on_the_wire() -> None:
    with pytest.raises(ValidationError, match="go together"):
        RunBody(rounds=1, clients_per_round=2, dp_clip=1.0)
    with pytest.raises(ValidationError, match="go together"):
        _round(noise_multiplier=1.0)
    with pytest.raises(ValidationError):
        RunBody(rounds=1, clients_per_round=2, dp_clip=1.0, noise_multiplier=1.0, delta=1.0)
    body = RunBody(rounds=1, clients_per_round=2, dp_clip=1.0, noise_multiplier=0.5)
    assert RunBody.model_validate_json(body.model_dump_json()) == body


def test_without_dp_the_update_is_the_delta_weighted_by_samples() -> None:
    delta = np.full(10, 3.0)
    out, weight = _participant().local_update(delta, 60, cohort_size=4, max_weight=1000)
    assert weight == 60
    assert np.array_equal(out, delta)


def test_with_dp_a_device_clips_to_dp_clip_and_adds_its_noise_share() -> None:
    p = _participant()
    delta = np.full(10, 3.0)  # norm 9.49, far over the clip
    # negligible noise: the update is the delta scaled to norm dp_clip, weight 1 (not 60)
    out, weight = p.local_update(delta, 60, cohort_size=4, max_weight=1000, **DP_TINY)
    assert weight == 1
    assert np.linalg.norm(out) == pytest.approx(0.5, rel=1e-6)
    assert np.allclose(out / np.linalg.norm(out), delta / np.linalg.norm(delta))
    # real noise: each coordinate gets N(0, (z C)^2 / m), m = the cohort size (4)
    big = np.zeros(200_000)
    noisy, _ = p.local_update(big, 60, cohort_size=4, max_weight=1000, **DP)
    assert float(np.std(noisy)) == pytest.approx(2.0 * 0.5 / 2.0, rel=0.02)
    again, _ = p.local_update(big, 60, cohort_size=4, max_weight=1000, **DP)
    assert not np.array_equal(noisy, again)  # fresh noise, not a replayed seed


@given(
    clip=st.floats(1e-3, 1e3),
    z=st.none() | st.floats(1e-3, 1e3),
    weight=st.integers(1, 1_000_000),
    extra=st.sampled_from([None, "x", -1.0]),
)
def test_he_round_bodies_round_trip_and_refuse_what_is_off(
    clip: float, z: float | None, weight: int, extra: object
) -> None:
    fields: dict[str, object] = {
        "round": 1, "cohort": COHORT, "job_id": "ab" * 16, "aggregator": "edge-b",
        "length": 7, "clip": clip, "max_weight": weight,
        "dp_clip": None if z is None else clip, "noise_multiplier": z,
    }  # fmt: skip
    body = HERoundBody.model_validate(fields)
    assert HERoundBody.model_validate_json(body.model_dump_json()) == body
    if extra is not None:
        with pytest.raises(ValidationError):  # an unknown field, or a bad value
            HERoundBody.model_validate(
                {**fields, "weights": extra} if extra == "x" else {**fields, "clip": extra}
            )
    with pytest.raises(ValidationError):
        HERoundBody.model_validate({**fields, "job_id": "../../etc"})
    with pytest.raises(ValidationError):  # he needs an aggregator, and only he takes one
        RunBody(rounds=1, clients_per_round=2, mode="he")
    with pytest.raises(ValidationError):
        RunBody(rounds=1, clients_per_round=2, aggregator="edge-b")
