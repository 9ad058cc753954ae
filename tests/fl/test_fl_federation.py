"""FedAvg, FedProx, client-level DP, aggregation modes and the per-round audit record."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fl_support import ShareForger

from securemesh.audit.events import new_event
from securemesh.crypto import Ed25519Signer
from securemesh.errors import ConfigError, LocalError
from securemesh.fl import (
    MLP,
    ClientDP,
    ClientUpdate,
    Federation,
    LocalTraining,
    LogisticRegression,
    PlainAggregator,
    SecAggAggregator,
    clip_update,
    epsilon_for,
    make_aggregator,
    model_hash,
    register_aggregator,
    train_local,
)


def _blobs(
    n_clients: int = 8, per: int = 40, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three Gaussian classes in 5 dimensions, each client skewed to one class (non-IID)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (3, 5))
    data = {}
    for i in range(n_clients):
        probs = np.full(3, 0.1)
        probs[i % 3] = 0.8
        y = rng.choice(3, per, p=probs)
        x = centers[y] + rng.normal(0, 1, (per, 5))
        data[f"dev-{i:02d}"] = (x, y.astype(np.int64))
    return data


@pytest.mark.parametrize("model", [LogisticRegression(5, 3), MLP(5, 7, 3)])
def test_gradients_match_finite_differences(model: LogisticRegression | MLP) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 5)), rng.integers(0, 3, 6)
    p = rng.normal(0, 0.5, model.size)
    _, g = model.loss_grad(p, x, y)
    for i in rng.choice(model.size, 12, replace=False):
        e = np.zeros(model.size)
        e[i] = 1e-6
        num = (model.loss_grad(p + e, x, y)[0] - model.loss_grad(p - e, x, y)[0]) / 2e-6
        assert abs(num - g[i]) < 1e-5


def test_fedprox_with_mu_zero_equals_fedavg() -> None:
    data = _blobs()
    runs = []
    for local in (LocalTraining("fedavg"), LocalTraining("fedprox", mu=0.0)):
        fed = Federation(LogisticRegression(5, 3), data, local=local, clients_per_round=4, seed=3)
        fed.run(3)
        runs.append(fed)
    assert np.array_equal(runs[0].params, runs[1].params)
    assert [r.model_hash for r in runs[0].history] == [r.model_hash for r in runs[1].history]


def test_fedprox_term_pulls_towards_the_global_model() -> None:
    x, y = _blobs(1)["dev-00"]
    model = LogisticRegression(5, 3)
    w0 = np.zeros(model.size)
    spec = {"epochs": 5, "lr": 0.2}
    free = train_local(
        model, w0, x, y, LocalTraining("fedavg", **spec), rng=np.random.default_rng(0)
    )
    prox = train_local(
        model, w0, x, y, LocalTraining("fedprox", mu=5.0, **spec), rng=np.random.default_rng(0)
    )
    assert 0 < np.linalg.norm(prox) < np.linalg.norm(free)
    with pytest.raises(ConfigError):
        LocalTraining("fedavg", mu=0.1)


def test_federation_learns_and_audits_each_round() -> None:
    data = _blobs()
    test_x = np.concatenate([d[0] for d in data.values()])
    test_y = np.concatenate([d[1] for d in data.values()])
    events: list[tuple[str, dict[str, object]]] = []
    fed = Federation(
        LogisticRegression(5, 3),
        data,
        clients_per_round=5,
        seed=1,
        audit=lambda kind, details: events.append((kind, details)),
        evaluate=(test_x, test_y),
    )
    fed.run(4)
    assert fed.history[-1].accuracy is not None
    assert fed.history[-1].accuracy > 0.9
    assert [k for k, _ in events] == ["fl.round_finished"] * 4
    for kind, details in events:  # valid audit events (flat details, model_hash required)
        new_event(kind, origin="cloud-1", subject=("round", str(details["round"])), details=details)
    last = events[-1][1]
    assert last["round"] == 4
    assert last["model_hash"] == model_hash(fed.params)
    assert last["participants"] == ",".join(fed.history[-1].participants)
    assert last["participants_n"] == 5
    assert last["dropped"] == ""


def test_secagg_mode_matches_plain_within_quantization_and_drops_are_survived() -> None:
    data = _blobs(n_clients=10)
    plain = PlainAggregator()
    sec = SecAggAggregator(clip=2.0, max_weight=100)
    rng = np.random.default_rng(5)
    updates = {c: ClientUpdate(rng.normal(0, 0.3, 40), len(y)) for c, (_, y) in data.items()}
    drops = {"dev-03": "masked", "dev-07": "consistency"}
    a = plain.aggregate(1, updates, drops)
    b = sec.aggregate(1, updates, drops)
    assert a.survivors == b.survivors
    assert "dev-03" not in b.survivors
    assert "dev-07" in b.survivors
    assert a.total_weight == b.total_weight
    step = 4.0 / ((1 << 32) // (10 * 100))
    assert np.max(np.abs(a.mean - b.mean)) <= step
    assert sec.last_bytes_per_client > 40 * 4


def test_secagg_federation_audits_an_excluded_forger() -> None:
    data = _blobs(n_clients=6)
    forger = "dev-02"
    inner = Ed25519Signer.generate()
    sec = SecAggAggregator(clip=2.0, max_weight=100, signers={forger: ShareForger(inner)})
    events: list[tuple[str, dict[str, object]]] = []
    fed = Federation(
        LogisticRegression(5, 3),
        data,
        clients_per_round=6,
        aggregator=sec,
        audit=lambda kind, details: events.append((kind, details)),
    )
    rec = fed.run_round()
    assert forger not in rec.survivors
    assert len(rec.survivors) == 5
    kinds = [k for k, _ in events]
    assert kinds == ["fl.client_excluded", "fl.round_finished"]
    assert events[0][1]["client"] == forger
    assert events[1][1]["survivors"] == ",".join(rec.survivors)
    assert events[1][1]["dropped"] == forger


def test_secagg_round_below_threshold_is_audited_as_aborted() -> None:
    data = _blobs(n_clients=6)
    fed = Federation(
        LogisticRegression(5, 3),
        data,
        clients_per_round=6,
        aggregator=SecAggAggregator(clip=2.0, max_weight=100),
        dropouts=lambda r, chosen: dict.fromkeys(chosen[:3], "masked"),
        audit=lambda kind, details: events.append((kind, details)),
    )
    events: list[tuple[str, dict[str, object]]] = []
    before = fed.params.copy()
    rec = fed.run_round()
    assert rec.aborted == "only 3 clients remain after stage masked input, threshold is 4"
    assert np.array_equal(fed.params, before)
    assert events[0][0] == "fl.round_aborted"


def test_client_level_dp_clips_adds_noise_and_reports_epsilon() -> None:
    v = np.full(100, 1.0)
    assert math.isclose(float(np.linalg.norm(clip_update(v, 2.0))), 2.0)
    dp = ClientDP(clip=1.0, noise_multiplier=1.1, delta=1e-5)
    noisy = dp.privatize(v, participants=4, rng=np.random.default_rng(0))
    assert float(np.std(noisy - clip_update(v, 1.0))) == pytest.approx(1.1 / 2, rel=0.2)
    # RDP of the Gaussian mechanism (Mironov 2017): more noise or fewer rounds, smaller epsilon
    assert epsilon_for(2.0, 10, 1e-5) < epsilon_for(1.0, 10, 1e-5) < epsilon_for(1.0, 50, 1e-5)
    # a closed form check: min over a of a T / (2 z^2) + log(1/delta) / (a - 1)
    z, t, delta = 5.0, 4, 1e-5
    best = min(
        a * t / (2 * z * z) + math.log(1 / delta) / (a - 1) for a in np.arange(1.01, 300, 0.01)
    )
    assert epsilon_for(z, t, delta) == pytest.approx(best, rel=0.02)
    data = _blobs()
    fed = Federation(LogisticRegression(5, 3), data, clients_per_round=8, dp=dp, seed=2)
    fed.run(2)
    assert fed.history[-1].epsilon == pytest.approx(epsilon_for(1.1, 2, 1e-5))


def test_modes_are_built_in_and_others_register() -> None:
    assert make_aggregator("he", preset="fast-4096", clip=1.0, max_weight=100).name == "he"
    with pytest.raises(ConfigError, match="unknown aggregation mode"):
        make_aggregator("fhe")

    class Doubling(PlainAggregator):
        name = "doubling"

    with pytest.raises(LocalError, match="cannot register"):
        register_aggregator("he", Doubling)  # a built-in mode cannot be replaced
    register_aggregator("doubling", Doubling)
    try:
        assert make_aggregator("doubling").name == "doubling"
    finally:
        from securemesh.fl import _aggregate

        _aggregate._REGISTRY.pop("doubling", None)


def test_fl_cli_mistakes_are_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    from securemesh.cli import main

    assert main(["fl", "run", "--to", "edge-a", "--clients-per-round", "2"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: give exactly one of --init FILE and --zeros N"]
