"""The ``he`` aggregation mode: CKKS FedAvg (real TenSEAL) against plain FedAvg.

Small presets where the property does not depend on size (``fast-4096``);
the FedAvg equality also on the default ``standard-8192``.
"""

from __future__ import annotations

import numpy as np
import pytest

from securemesh.errors import ConfigError, DecodeError, LocalError
from securemesh.fl import (
    ClientUpdate,
    Federation,
    HEAggregator,
    HEModelOwner,
    HESum,
    LogisticRegression,
    PlainAggregator,
    encrypt_update,
)
from securemesh.he import (
    check_public_context,
    context_has_secret_key,
    get_preset,
    load_public_context,
)

FAST = "fast-4096"


def _data(n_clients: int = 8, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three Gaussian classes in 5 dimensions, clients skewed to one class, unequal sizes."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (3, 5))
    data = {}
    for i in range(n_clients):
        probs = np.full(3, 0.1)
        probs[i % 3] = 0.8
        y = rng.choice(3, 20 + 7 * i, p=probs)
        data[f"dev-{i:02d}"] = (centers[y] + rng.normal(0, 1, (len(y), 5)), y.astype(np.int64))
    return data


def _updates(n: int, length: int, seed: int = 1) -> dict[str, ClientUpdate]:
    rng = np.random.default_rng(seed)
    return {
        f"dev-{i:02d}": ClientUpdate(rng.uniform(-1, 1, length), int(rng.integers(1, 100)))
        for i in range(n)
    }


@pytest.mark.parametrize("preset", [FAST, "standard-8192"])
def test_he_fedavg_equals_plain_within_the_stated_bound(preset: str) -> None:
    records: list[tuple[str, dict[str, object]]] = []
    model = LogisticRegression(5, 3)
    plain = Federation(model, _data(), clients_per_round=6, seed=3)
    he = HEAggregator(preset=preset, clip=10.0, max_weight=100, precision=0.3)
    fed = Federation(
        model,
        _data(),
        clients_per_round=6,
        seed=3,
        aggregator=he,
        audit=lambda kind, details: records.append((kind, details)),
    )
    plain.run_round()
    rec = fed.run_round()
    assert rec.survivors == rec.participants
    # the stated bound: error_bound(k) / Σn_i on the weighted mean (server_lr = 1)
    total = sum(len(fed.data[c][1]) for c in rec.participants)
    bound = get_preset(preset).error_bound(len(rec.participants)) / total
    assert he.last_error_bound == pytest.approx(bound)
    error = float(np.max(np.abs(fed.params - plain.params)))
    assert 0 < error <= bound  # CKKS is approximate: never exact, always within the bound
    assert not np.array_equal(fed.params, fed.model.init(np.random.default_rng(3)))
    kind, details = records[-1]
    assert kind == "fl.round_finished"
    assert details["mode"] == "he"
    assert details["survivors_n"] == 6


def test_the_aggregator_never_holds_a_secret_key() -> None:
    he = HEAggregator(preset=FAST, clip=1.0, max_weight=100, precision=0.3)
    updates = _updates(3, 10)
    agg = he.aggregate(1, updates, {})
    assert he.last_sum is not None
    held = he.last_sum.serialized_context()  # everything the aggregator's context has
    assert not context_has_secret_key(held)
    check_public_context(held, max_size=16 * 1024 * 1024)  # structure: public keys only
    assert not he.last_sum.public.ts.has_secret_key()
    assert he.owner is not None
    assert not context_has_secret_key(he.owner.public_bytes())
    # and the owner's decryption is of the sum only: the weighted mean is right
    total = sum(u.weight for u in updates.values())
    mean = sum(u.vector * u.weight for u in updates.values()) / total
    assert agg.total_weight == total
    assert np.max(np.abs(agg.mean - mean)) <= he.last_error_bound


def test_dropouts_before_sending_are_left_out_and_too_few_abort() -> None:
    he = HEAggregator(preset=FAST, clip=1.0, max_weight=100, precision=0.3)
    updates = _updates(4, 20, seed=2)
    drops = {"dev-00": "masked", "dev-01": "unmask"}  # dev-01 sent its ciphertext already
    agg = he.aggregate(1, updates, drops)
    assert agg.survivors == ("dev-01", "dev-02", "dev-03")
    expected = PlainAggregator().aggregate(1, updates, drops)
    assert agg.survivors == expected.survivors
    assert agg.total_weight == expected.total_weight
    assert np.max(np.abs(agg.mean - expected.mean)) <= he.last_error_bound

    # a client whose update cannot be encrypted (a weight over max_weight, a NaN) stays out
    bad = dict(updates)
    bad["dev-02"] = ClientUpdate(updates["dev-02"].vector, 101)
    bad["dev-03"] = ClientUpdate(np.full(20, np.nan), 5)
    agg = he.aggregate(2, bad, {})
    assert agg.survivors == ("dev-00", "dev-01")
    assert [(e.client, e.stage) for e in agg.exclusions] == [
        ("dev-02", "encrypted"),
        ("dev-03", "encrypted"),
    ]

    records: list[tuple[str, dict[str, object]]] = []
    fed = Federation(
        LogisticRegression(5, 3),
        _data(4),
        clients_per_round=3,
        aggregator=he,
        dropouts=lambda r, chosen: dict.fromkeys(chosen[1:], "advertise"),
        audit=lambda kind, details: records.append((kind, details)),
    )
    before = fed.params.copy()
    rec = fed.run_round()
    assert rec.aborted is not None
    assert "at least 2" in rec.aborted
    assert records[-1][0] == "fl.round_aborted"
    assert np.array_equal(fed.params, before)  # nothing decrypted, nothing applied


def test_bad_ciphertexts_exclude_their_sender_and_the_sum_goes_on() -> None:
    owner = HEModelOwner(FAST)
    preset = owner.preset
    agg = HESum(owner.public_bytes(), preset, 4)
    x = {"a": np.array([0.1, -0.2, 0.3]), "b": np.array([0.5, 0.5, -0.5])}
    frames = {c: encrypt_update(agg.public, v, 2, clip=1.0, max_weight=10) for c, v in x.items()}
    other = HEModelOwner("score-4096")  # other parameters: SEAL refuses them
    foreign_ctx = load_public_context(other.public_bytes(), other.preset)
    foreign = encrypt_update(foreign_ctx, x["a"], 1, clip=1.0, max_weight=1)
    bad = {
        "garbage": [b"\x00" * 1000],
        "truncated": [frames["a"][0][: len(frames["a"][0]) // 2]],
        "foreign": foreign,
        "two-chunks": frames["a"] * 2,
    }
    assert agg.add("a", frames["a"])
    for client, f in bad.items():
        assert not agg.add(client, f)
    assert not agg.add("a", frames["b"])  # a second update from one client
    assert agg.add("b", frames["b"])
    assert [e.client for e in agg.exclusions] == [*bad, "a"]
    assert all(e.reason for e in agg.exclusions)
    total, weight = owner.decrypt_sum(agg.result_frames(), agg.lengths, len(agg.contributors))
    assert weight == 4
    assert np.max(np.abs(total - 2 * (x["a"] + x["b"]))) <= preset.error_bound(2)


def test_the_key_owner_decrypts_only_sums_and_checks_the_weight() -> None:
    owner = HEModelOwner(FAST)
    agg = HESum(owner.public_bytes(), owner.preset, 3)
    agg.add("a", encrypt_update(agg.public, np.zeros(2), 5, clip=1.0, max_weight=10))
    with pytest.raises(LocalError, match="at least 2"):
        owner.decrypt_sum(agg.result_frames(), agg.lengths, 1)
    # one update passed off as a sum of 7: its weight (5) cannot be 7 updates' sample count
    with pytest.raises(DecodeError, match="corrupted"):
        owner.decrypt_sum(agg.result_frames(), agg.lengths, 7)
    with pytest.raises(LocalError, match="weight"):
        encrypt_update(agg.public, np.zeros(2), 11, clip=1.0, max_weight=10)
    with pytest.raises(ConfigError):
        HEModelOwner(FAST, min_contributors=1)


def test_rounds_the_preset_cannot_meet_are_refused() -> None:
    with pytest.raises(ConfigError, match="error up to"):
        HEAggregator(preset=FAST, precision=1e-6).check(10)  # fast-4096 is too coarse
    with pytest.raises(ConfigError, match="can hold"):
        HEAggregator(preset=FAST, clip=100.0, max_weight=10_000, precision=1.0).check(
            10
        )  # 1e7 > 2^19
    HEAggregator(preset="standard-8192", clip=4.0, max_weight=1000).check(10)


def test_the_docs_he_round_runs() -> None:
    from docs_support import marked_block

    printed: list[object] = []
    code = marked_block("federated-learning.md", "fl-he-round")
    exec(compile(code, "docs/federated-learning.md", "exec"), {"print": printed.append})
    assert len(printed) == 1
    assert str(printed[0]).startswith("error bound of the mean: ")
