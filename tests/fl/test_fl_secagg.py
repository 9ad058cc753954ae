"""Secure aggregation (Bonawitz et al. 2017, Bell et al. 2020): the sans-I/O round, in memory."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from fl_support import ShareForger, make_cohort, pick_dropouts
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.crypto import Ed25519Signer
from securemesh.crypto.kx import derive_shared_key
from securemesh.crypto.prg import expand_mask
from securemesh.crypto.shamir import Share, interpolate_at_zero
from securemesh.errors import LocalError
from securemesh.fl import DROP_STAGES, ClientState, SecAggConfig, ServerState, run_in_memory
from securemesh.fl._messages import (
    AdvertiseKeys,
    RoundKeys,
    ShareKeys,
    SurvivorSet,
    UnmaskShares,
    decode,
)
from securemesh.fl._secagg import _Agreement


def test_exact_sum_complete_graph() -> None:
    cohort = make_cohort(8, length=1000, degree=7)
    run = run_in_memory(cohort.server(), cohort.clients())
    assert run.server.state is ServerState.DONE
    assert run.server.survivors == cohort.config.cohort
    assert np.array_equal(run.result, cohort.expected(cohort.config.cohort))
    assert all(c.state is ClientState.DONE for c in run.clients.values())


@pytest.mark.parametrize("bits", [12, 32, 40])
def test_exact_sum_secagg_plus_sparse_graph(bits: int) -> None:
    cohort = make_cohort(40, length=300, bits=bits)
    assert cohort.config.k == 12
    assert cohort.config.t == 7
    run = run_in_memory(cohort.server(), cohort.clients())
    assert run.server.state is ServerState.DONE
    assert np.array_equal(run.result, cohort.expected(cohort.config.cohort))
    # sparse: a client only ever talks about its 12 neighbours
    assert all(len(cohort.config.neighbours(c)) == 12 for c in cohort.config.cohort)


@pytest.mark.parametrize("fraction", [0.1, 0.3])
@pytest.mark.parametrize("when", ["masked", "consistency"])
@pytest.mark.parametrize("degree", [None, 19])
def test_dropouts_still_yield_exact_sum_of_survivors(
    fraction: float, when: str, degree: int | None
) -> None:
    """``masked``: gone before sending the masked input; ``consistency``: right after."""
    cohort = make_cohort(20 if degree else 40, length=200, degree=degree, seed=7)
    dropped = pick_dropouts(cohort, fraction)
    run = run_in_memory(cohort.server(), cohort.clients(), dropouts=dict.fromkeys(dropped, when))
    server = run.server
    assert server.state is ServerState.DONE, server.abort_reason
    if when == "masked":  # their inputs never arrived: the sum is over the others
        expected_in = tuple(c for c in cohort.config.cohort if c not in dropped)
    else:  # their masked inputs arrived: they count, their self masks are rebuilt
        expected_in = cohort.config.cohort
    assert server.survivors == expected_in
    assert np.array_equal(server.result, cohort.expected(expected_in))


def test_round_aborts_below_threshold_and_says_why() -> None:
    cohort = make_cohort(10, length=50, degree=9)  # t = 6
    dropped = cohort.config.cohort[:5]
    run = run_in_memory(
        cohort.server(), cohort.clients(), dropouts=dict.fromkeys(dropped, "masked")
    )
    assert run.server.state is ServerState.ABORTED
    assert run.server.abort_reason == (
        "only 5 clients remain after stage masked input, threshold is 6"
    )
    assert run.result is None
    survivor = run.clients[cohort.config.cohort[7]]
    assert survivor.state is ClientState.ABORTED
    assert "server aborted the round: only 5 clients remain" in (survivor.abort_reason or "")


def test_abort_when_a_dropped_clients_key_has_too_few_holders() -> None:
    cohort = make_cohort(20, length=50, seed=3)  # k = 10, 11 holders, t = 6
    cfg = cohort.config
    victim = cfg.cohort[0]
    # the victim and 5 of its 10 neighbours vanish before the masked input: 5 holders left
    dropped = [victim, *cfg.neighbours(victim)[:5]]
    run = run_in_memory(
        cohort.server(), cohort.clients(), dropouts=dict.fromkeys(dropped, "masked")
    )
    assert run.server.state is ServerState.ABORTED
    assert run.server.abort_reason is not None
    assert "cannot rebuild the " in run.server.abort_reason
    assert "valid shares, threshold 6" in run.server.abort_reason


def test_client_times_out_when_the_server_is_silent() -> None:
    cohort = make_cohort(4, length=10, degree=3)
    client = cohort.clients()[cohort.config.cohort[0]]
    client.start()
    client.tick(cohort.config.stage_timeout - 1)
    assert client.state is ClientState.ADVERTISED
    client.tick(cohort.config.stage_timeout + 1)
    assert client.state is ClientState.ABORTED
    assert client.abort_reason == "timed out waiting for the server after stage advertised"


def test_server_stage_deadline_moves_on_without_the_silent() -> None:
    cohort = make_cohort(6, length=10, degree=5)
    server = cohort.server()
    clients = cohort.clients()
    for cid in cohort.config.cohort[:5]:
        server.receive(cid, clients[cid].start(), 0.0)
    assert server.state is ServerState.ADVERTISE  # still waiting for the sixth
    server.tick(cohort.config.stage_timeout)
    assert server.state is ServerState.SHARE
    assert server.stage_counts["advertise"] == 5


def _chi_square_high_byte(vec: np.ndarray) -> float:
    counts = np.bincount((vec >> np.uint32(24)).astype(np.int64), minlength=256)
    expected = len(vec) / 256
    return float(((counts - expected) ** 2 / expected).sum())


def test_masked_inputs_look_uniform_and_pairwise_masks_need_t_shares() -> None:
    """What the server sees of one client: uniform, even after removing its self mask."""
    cohort = make_cohort(12, length=65_536, degree=6, seed=5)  # t = 4 of 7 holders
    cfg = cohort.config
    for c in cfg.cohort:  # worst case for privacy: every input is all zeros
        cohort.inputs[c] = np.zeros(cfg.length, dtype=np.uint32)
    frames: list[tuple[str, bytes]] = []

    def record(cid: str):
        def tap(stage: str, frame: bytes) -> bytes:
            frames.append((cid, frame))
            return frame

        return tap

    dropped = cfg.cohort[0]
    run = run_in_memory(
        cohort.server(),
        cohort.clients(),
        dropouts={dropped: "masked"},
        tamper={c: record(c) for c in cfg.cohort},
    )
    assert run.server.state is ServerState.DONE
    assert not run.result.any()  # the sum of zeros
    msgs = [(cid, decode(f)) for cid, f in frames]
    target = cfg.cohort[1]
    (masked,) = [m for c, m in msgs if c == target and hasattr(m, "vector")]
    y = np.frombuffer(masked.vector, dtype="<u4")
    # 255 degrees of freedom: a statistic above 400 has probability < 1e-8 under uniformity
    assert _chi_square_high_byte(y) < 400
    # the server also rebuilt the target's self-mask seed (it survived); removing that
    # self mask still leaves the pairwise masks, which are uniform too
    b_shares = [
        Share.from_bytes(s.share)
        for _, m in msgs
        if isinstance(m, UnmaskShares)
        for s in m.shares
        if s.owner == target and s.kind == 0
    ]
    assert len(b_shares) >= cfg.t
    # no honest client ever revealed a share of a survivor's masking key
    assert not any(
        s.kind == 1 and s.owner != dropped
        for _, m in msgs
        if isinstance(m, UnmaskShares)
        for s in m.shares
    )
    # and t - 1 shares of a masking key (the dropped client's, revealed) determine nothing:
    s_shares = [
        (s.owner, Share.from_bytes(s.share))
        for _, m in msgs
        if isinstance(m, UnmaskShares)
        for s in m.shares
        if s.kind == 1
    ]
    points = [(sh.x, sh.y) for owner, sh in s_shares if owner == dropped]
    assert len(points) >= cfg.t
    full = interpolate_at_zero(points[: cfg.t])
    short = interpolate_at_zero(points[: cfg.t - 1])
    assert full != short  # t - 1 points give some other "secret"
    raw = full.to_bytes(33, "big")
    assert raw[0] == 1  # the sentinel: t points rebuild the real 32-byte key


def test_agreement_matches_the_crypto_recipe() -> None:
    a, b = Ed25519Signer.generate().seed(), Ed25519Signer.generate().seed()
    ka = _Agreement(a)
    kb_pub = _Agreement(b).public()
    assert ka.derive(kb_pub, b"info") == derive_shared_key(a, kb_pub, info=b"info")


def test_wrongly_signed_share_excludes_sender_and_is_reported() -> None:
    cohort = make_cohort(12, length=100, degree=11)
    forger = cohort.config.cohort[3]
    signer = cohort.signers[forger]
    assert isinstance(signer, Ed25519Signer)
    run = run_in_memory(cohort.server(), cohort.clients(**{forger: ShareForger(signer)}))
    server = run.server
    assert server.state is ServerState.DONE
    honest = tuple(c for c in cohort.config.cohort if c != forger)
    assert server.survivors == honest
    assert np.array_equal(server.result, cohort.expected(honest))
    (excl,) = server.take_exclusions()
    assert excl.client == forger
    assert excl.stage == "masked"
    assert excl.accuser in honest
    assert "AuthenticationError" in excl.reason


def test_malformed_share_ciphertext_excludes_sender() -> None:
    cohort = make_cohort(10, length=100, degree=9)
    bad = cohort.config.cohort[0]

    def corrupt(stage: str, frame: bytes) -> bytes:
        if stage != "share":
            return frame
        msg = decode(frame)
        assert isinstance(msg, ShareKeys)
        (h, ct), *rest = msg.ciphertexts
        flipped = ct[:30] + bytes([ct[30] ^ 1]) + ct[31:]
        return ShareKeys(msg.round_id, msg.client, ((h, flipped), *rest)).encode()

    run = run_in_memory(cohort.server(), cohort.clients(), tamper={bad: corrupt})
    assert run.server.state is ServerState.DONE
    honest = cohort.config.cohort[1:]
    assert np.array_equal(run.server.result, cohort.expected(honest))
    (excl,) = run.server.take_exclusions()
    assert excl.client == bad
    assert "AEAD open failed" in excl.reason


def test_garbage_frame_excludes_sender_and_round_goes_on() -> None:
    cohort = make_cohort(10, length=100, degree=9)
    bad = cohort.config.cohort[9]
    run = run_in_memory(
        cohort.server(),
        cohort.clients(),
        tamper={bad: lambda stage, f: f[:-3] if stage == "masked" else f},
    )
    assert run.server.state is ServerState.DONE
    assert np.array_equal(run.server.result, cohort.expected(cohort.config.cohort[:9]))
    (excl,) = run.server.take_exclusions()
    assert excl.client == bad
    assert "DecodeError" in excl.reason


def test_wrongly_signed_advertisement_is_excluded() -> None:
    cohort = make_cohort(8, length=20, degree=7)
    liar = cohort.config.cohort[2]
    run = run_in_memory(cohort.server(), cohort.clients(**{liar: Ed25519Signer.generate()}))
    assert run.server.state is ServerState.DONE
    honest = tuple(c for c in cohort.config.cohort if c != liar)
    assert np.array_equal(run.server.result, cohort.expected(honest))
    (excl,) = run.server.take_exclusions()
    assert excl.client == liar
    assert excl.stage == "advertise"


def test_self_mask_and_pair_masks_come_from_the_chacha_prg() -> None:
    seed = bytes(range(32))
    a = expand_mask(seed, 8, bits=32, label=b"self")
    assert a.dtype == np.uint32
    assert not np.array_equal(a, expand_mask(seed, 8, label=b"pair"))


def test_config_refuses_weak_thresholds_and_odd_sparse_degree() -> None:
    base = {"round_id": bytes(16), "length": 4, "graph_seed": bytes(32)}
    cohort = tuple(f"c{i}" for i in range(30))
    with pytest.raises(LocalError, match="strict majority"):
        SecAggConfig(cohort=cohort, threshold=3, **base)
    with pytest.raises(LocalError, match="even degree"):
        SecAggConfig(cohort=cohort, degree=7, **base)
    with pytest.raises(LocalError, match="duplicate"):
        SecAggConfig(cohort=("a", "a"), **base)
    cfg = SecAggConfig(cohort=cohort, **base)
    assert cfg.k == 10
    assert cfg.t == 6
    # the graph is symmetric and fixed by the seed
    assert all(c in cfg.neighbours(v) for c in cohort for v in cfg.neighbours(c))
    other = SecAggConfig(cohort=cohort, **{**base, "graph_seed": bytes([1]) * 32})
    assert any(cfg.neighbours(c) != other.neighbours(c) for c in cohort)


def test_docs_round_example_runs() -> None:
    from docs_support import marked_block

    printed: list[object] = []
    code = marked_block("federated-learning.md", "fl-secagg-round")
    exec(compile(code, "docs/federated-learning.md", "exec"), {"print": printed.append})
    assert printed == ["k=10 t=6 survivors=19"]


def test_an_unreachable_client_is_forgotten_without_waiting_for_the_deadline() -> None:
    cohort = make_cohort(6, length=10, degree=5)
    server = cohort.server()
    clients = cohort.clients()
    for cid in cohort.config.cohort[:5]:
        server.receive(cid, clients[cid].start(), 0.0)
    assert server.state is ServerState.ADVERTISE
    server.forget(cohort.config.cohort[5], 0.1)
    assert server.state is ServerState.SHARE  # no deadline needed
    assert server.stage_counts["advertise"] == 5


@settings(max_examples=8)
@given(st.data())
def test_any_dropout_pattern_gives_the_exact_sum_or_a_stated_abort(data: st.DataObject) -> None:
    """Protocol invariant: whoever drops when, the result is exact over U3 or there is none."""
    cohort = make_cohort(7, length=16, degree=6, seed=11)  # t = 4
    drops = data.draw(
        st.dictionaries(st.sampled_from(cohort.config.cohort), st.sampled_from(DROP_STAGES))
    )
    run = run_in_memory(cohort.server(), cohort.clients(), dropouts=drops)
    server = run.server
    if server.state is ServerState.DONE:
        assert len(server.survivors) >= cohort.config.t
        assert not any(drops.get(c) in ("advertise", "share", "masked") for c in server.survivors)
        assert np.array_equal(server.result, cohort.expected(server.survivors))
    else:
        assert server.state is ServerState.ABORTED
        assert server.result is None
        assert server.abort_reason


def test_client_refuses_a_substituted_key_and_a_survivor_set_without_it() -> None:
    """What a server that lies gets: the client aborts, it reveals nothing."""
    cohort = make_cohort(4, length=8, degree=3)
    cfg = cohort.config
    me, other = cfg.cohort[0], cfg.cohort[1]
    client = cohort.clients()[me]
    client.start()
    peer = cohort.clients()[other]
    real = decode(peer.start())
    assert isinstance(real, AdvertiseKeys)
    swapped = replace(real, c_pk=_Agreement(bytes(range(32))).public())  # the server's own key
    assert client.receive(RoundKeys(cfg.round_id, (swapped,)).encode(), 1.0) is None
    assert client.state is ClientState.ABORTED
    assert client.abort_reason == "AuthenticationError: signature does not verify"
    # a survivor set that leaves the client out, at the consistency stage
    run = run_in_memory(cohort.server(), cohort.clients())
    assert run.server.state is ServerState.DONE
    victim = cohort.clients()[me]
    victim.state = ClientState.MASKED  # as after sending its masked input
    assert victim.receive(SurvivorSet(cfg.round_id, cfg.cohort[1:]).encode(), 1.0) is None
    assert victim.abort_reason == (
        "RoundAborted: the server left this client out of the survivor set"
    )
