"""Quantization into Z_{2^bits}: clipping, stochastic rounding, weights, overflow refusal."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemesh.errors import ConfigError, LocalError
from securemesh.fl import Quantizer


def test_refuses_a_config_that_could_overflow() -> None:
    with pytest.raises(ConfigError, match="overflow"):
        Quantizer(bits=32, clip=1.0, levels=1 << 16, max_clients=100, max_weight=1000)
    q = Quantizer.fitting(bits=32, clip=1.0, max_clients=100, max_weight=1000)
    assert q.max_clients * q.max_weight * q.levels < 1 << 32
    assert (q.levels + 1) * 100 * 1000 >= 1 << 32  # the finest that fits


def test_refuses_weights_above_the_declared_maximum() -> None:
    q = Quantizer.fitting(bits=32, clip=1.0, max_clients=10, max_weight=50)
    with pytest.raises(LocalError, match="weight"):
        q.encode(np.zeros(3), 51)
    with pytest.raises(LocalError, match="finite"):
        q.encode(np.array([np.nan]), 1)


def test_clipping_and_exact_endpoints() -> None:
    q = Quantizer(bits=16, clip=2.0, levels=100, max_clients=10)
    enc = q.encode(np.array([-5.0, -2.0, 2.0, 7.0]), seed=bytes(32))
    assert enc[:-1].tolist() == [0, 0, 100, 100]
    assert enc[-1] == 1


def test_stochastic_rounding_is_unbiased_and_seeded() -> None:
    q = Quantizer(bits=32, clip=1.0, levels=10, max_clients=1000)
    x = np.full(200_000, 0.123)
    a = q.encode(x, seed=bytes(32))
    assert np.array_equal(a, q.encode(x, seed=bytes(32)))
    assert not np.array_equal(a, q.encode(x, seed=bytes([1]) * 32))
    mean, _ = q.decode_mean(a)
    assert abs(float(mean.mean()) - 0.123) < 1e-3  # step 0.2, 200k draws
    assert set(np.unique(a[:-1]).tolist()) == {5, 6}


@given(
    st.lists(
        st.tuples(
            st.lists(st.floats(-3, 3, allow_nan=False), min_size=4, max_size=4),
            st.integers(1, 40),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_weighted_mean_within_one_step(clients: list[tuple[list[float], int]]) -> None:
    q = Quantizer.fitting(bits=32, clip=2.0, max_clients=12, max_weight=40)
    total = np.zeros(5, dtype=np.uint64)
    for i, (x, w) in enumerate(clients):
        total += q.encode(np.array(x), w, seed=bytes([i]) * 32)
    assert int(total.max()) < 1 << 32  # never near a wrap
    mean, weight = q.decode_mean(total.astype(np.uint32))
    assert weight == sum(w for _, w in clients)
    exact = sum(np.clip(np.array(x), -2, 2) * w for x, w in clients) / weight
    assert np.all(np.abs(mean - exact) <= q.step + 1e-9)
