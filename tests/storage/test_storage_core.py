"""The sans-I/O storage core: segment codec, manifest, placement, put/get plans (in memory).

An in-memory "grid" (a dict per node) stands in for the edges: the plans
are pure, so what they promise is tested here without sockets, and
hypothesis drives the invariants: any k of n shards rebuild; a corrupt shard
is detected and treated as missing; swapped or reordered segments fail
authentication; a forged manifest is refused; a reader without a wrapped key
cannot decrypt; memory held by a plan does not grow with the object.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securemesh.crypto.identity import NodeIdentity
from securemesh.errors import AuthenticationError, DecodeError, LocalError
from securemesh.storage import (
    Candidate,
    GetPlan,
    Manifest,
    ObjectUnreadable,
    PutPlan,
    decode_segment,
    encode_segment,
    open_manifest,
    peek_owner_unverified,
    place,
    regenerate_shards,
    replacements,
    sign_manifest,
)

WRITER = NodeIdentity.generate()
READER = NodeIdentity.generate()
OUTSIDER = NodeIdentity.generate()
SEG = 1024
NODES = [f"edge-{i}" for i in range(8)]


def det_rng(seed: int) -> Callable[[int], bytes]:
    gen = random.Random(seed)
    return gen.randbytes


Grid = dict[str, dict[bytes, bytes]]


def put_object(
    data: bytes, *, k: int = 2, n: int = 3, seed: int = 1, readers: dict[str, bytes] | None = None
) -> tuple[Manifest, bytes, Grid]:
    """Drive a PutPlan to completion into an in-memory grid."""
    placement = NODES[:n]
    plan = PutPlan(
        name="obj/x",
        owner="writer",
        signer=WRITER.signer,
        size=len(data),
        placement=placement,
        readers=readers or {"writer": WRITER.kx_public, "reader": READER.kx_public},
        k=k,
        n=n,
        segment_size=SEG,
        rng=det_rng(seed),
    )
    grid: Grid = {node: {} for node in placement}
    for i in range(plan.count):
        for put in plan.segment(data[i * SEG : (i + 1) * SEG]):
            grid[put.node][put.hash] = put.data
            plan.stored(put.segment, put.index)
    manifest, blob = plan.finish()
    return manifest, blob, grid


def get_object(plan: GetPlan, grid: Grid) -> bytes:
    """Drive a GetPlan over the grid (a node without the shard = missing)."""
    out = []
    for i in range(plan.count):
        while not plan.ready(i):
            for want in plan.wanted(i):
                blob = grid.get(want.node, {}).get(want.hash)
                if blob is None:
                    plan.missing(want.segment, want.index, "not_found")
                else:
                    plan.received(want.segment, want.index, blob)
        out.append(plan.plaintext(i))
    return b"".join(out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=5 * SEG + 17),
    kn=st.sampled_from([(1, 1), (1, 3), (2, 3), (3, 5), (4, 6)]),
    drop_seed=st.integers(0, 2**32),
)
def test_any_k_of_n_rebuild(data: bytes, kn: tuple[int, int], drop_seed: int) -> None:
    k, n = kn
    manifest, blob, grid = put_object(data, k=k, n=n)
    # lose n-k whole nodes, chosen at random
    for node in random.Random(drop_seed).sample(manifest.placement, n - k):
        grid[node].clear()
    plan = GetPlan.for_reader(open_manifest(blob, WRITER.verify_key), "reader", READER.kx_secret())
    assert get_object(plan, grid) == data
    assert len(plan.missing_shards) <= (n - k) * len(manifest.segments)


@settings(max_examples=30, deadline=None)
@given(data=st.binary(min_size=1, max_size=3 * SEG), flip=st.integers(0, 10**6))
def test_corrupt_shard_detected_and_read_continues(data: bytes, flip: int) -> None:
    manifest, _, grid = put_object(data, k=2, n=3)
    node = manifest.placement[flip % 3]
    digest = next(iter(grid[node]))
    damaged = bytearray(grid[node][digest])
    damaged[flip % len(damaged)] ^= 1 << (flip % 8)
    grid[node][digest] = bytes(damaged)
    plan = GetPlan.for_reader(manifest, "writer", WRITER.kx_secret())
    assert get_object(plan, grid) == data
    segment = next(i for i, s in enumerate(manifest.segments) if digest.hex() in s.shards)
    index = manifest.segments[segment].shards.index(digest.hex())
    if index < 2:  # the plan asked for it first (shards 0..k-1), so it saw the damage
        assert plan.corrupt == [(segment, index, node)]


def test_too_many_losses_is_unreadable() -> None:
    manifest, _, grid = put_object(b"x" * 3000, k=2, n=3)
    grid[manifest.placement[0]].clear()
    grid[manifest.placement[2]].clear()
    with pytest.raises(ObjectUnreadable):
        get_object(GetPlan.for_reader(manifest, "writer", WRITER.kx_secret()), grid)


def test_a_node_that_failed_is_asked_last() -> None:
    manifest, _, grid = put_object(b"y" * (3 * SEG), k=2, n=3)
    grid[manifest.placement[0]].clear()
    plan = GetPlan.for_reader(manifest, "writer", WRITER.kx_secret())
    assert get_object(plan, grid) == b"y" * (3 * SEG)
    assert len(plan.missing_shards) == 1  # segments 1 and 2 skip the failed node


def test_swapped_and_reordered_segments_fail_authentication() -> None:
    key, oid = bytes(32), bytes(range(16))
    a = encode_segment(key, oid, 0, 2, b"A" * 100, 2, 3)
    b = encode_segment(key, oid, 1, 2, b"B" * 100, 2, 3)
    shards_a = dict(enumerate(a.shards))
    assert decode_segment(key, oid, 0, 2, a.cipher_size, shards_a, 2, 3) == b"A" * 100
    with pytest.raises(AuthenticationError):  # segment 0's bytes at position 1
        decode_segment(key, oid, 1, 2, a.cipher_size, shards_a, 2, 3)
    with pytest.raises(AuthenticationError):  # truncated: the object had 2 segments, not 1
        decode_segment(key, oid, 0, 1, a.cipher_size, shards_a, 2, 3)
    with pytest.raises(AuthenticationError):  # transplanted into another object
        decode_segment(key, bytes(16), 0, 2, a.cipher_size, shards_a, 2, 3)
    # mixing shards of two segments does not rebuild either
    mixed = {0: a.shards[0], 1: b.shards[1]}
    with pytest.raises(AuthenticationError):
        decode_segment(key, oid, 0, 2, a.cipher_size, mixed, 2, 3)


def test_reordered_segments_in_a_forged_manifest_fail() -> None:
    data = b"1" * SEG + b"2" * SEG
    manifest, _, grid = put_object(data)
    segs = list(reversed(manifest.segments))
    forged = manifest.model_copy(update={"segments": segs})
    plan = GetPlan.for_reader(forged, "writer", WRITER.kx_secret())
    with pytest.raises(AuthenticationError):
        get_object(plan, grid)


def test_forged_manifest_is_refused() -> None:
    manifest, blob, _ = put_object(b"secret" * 100)
    # re-signed by someone else
    with pytest.raises(AuthenticationError):
        open_manifest(sign_manifest(manifest, OUTSIDER.signer), WRITER.verify_key)
    # a reader added without the owner's signature
    body = manifest.model_copy(update={"readers": {**manifest.readers, "x": "00" * 80}})
    tampered = bytearray(sign_manifest(body, WRITER.signer))
    tampered[-1] ^= 1
    with pytest.raises(AuthenticationError):
        open_manifest(bytes(tampered), WRITER.verify_key)
    # any flipped byte anywhere
    for pos in (0, 5, 20, len(blob) // 2, len(blob) - 70):
        bad = bytearray(blob)
        bad[pos] ^= 0x40
        with pytest.raises((AuthenticationError, DecodeError)):
            open_manifest(bytes(bad), WRITER.verify_key)
    assert peek_owner_unverified(blob) == "writer"


def test_manifest_that_lies_about_hashes_does_not_validate() -> None:
    manifest, _, _ = put_object(b"z" * 2000)
    segs = [s.model_copy(update={"shards": ["00" * 32] * 3}) for s in manifest.segments]
    with pytest.raises(ValueError, match="merkle_root"):
        Manifest.model_validate(
            {**manifest.model_dump(), "segments": [s.model_dump() for s in segs]}
        )


def test_non_canonical_manifest_is_refused() -> None:
    manifest, _, _ = put_object(b"q" * 10)
    import json

    body = json.dumps(manifest.model_dump(mode="json"), indent=1).encode()
    import struct

    blob = (
        struct.pack(">4sI", b"SMM1", len(body))
        + body
        + WRITER.sign(b"securemesh.storage.manifest.v1\x00" + body)
    )
    with pytest.raises(DecodeError, match="canonical"):
        open_manifest(blob, WRITER.verify_key)


@settings(max_examples=50, deadline=None)
@given(blob=st.binary(max_size=400))
def test_manifest_decoder_never_crashes(blob: bytes) -> None:
    with pytest.raises((AuthenticationError, DecodeError)):
        open_manifest(blob, WRITER.verify_key)


def test_reader_without_wrapped_key_cannot_decrypt() -> None:
    manifest, _, grid = put_object(b"private" * 300, readers={"writer": WRITER.kx_public})
    with pytest.raises(AuthenticationError):
        GetPlan.for_reader(manifest, "reader", READER.kx_secret())
    # claiming the writer's entry without its private key does not open it either
    with pytest.raises(AuthenticationError):
        GetPlan.for_reader(manifest, "writer", OUTSIDER.kx_secret())
    # and the shards alone hold no plaintext
    assert all(b"private" not in blob for node in grid.values() for blob in node.values())


def test_plan_memory_does_not_grow_with_object_size() -> None:
    """A put plan keeps hashes only; a get plan frees each segment after decoding it."""
    small = PutPlan(
        name="m", owner="w", signer=WRITER.signer, size=SEG, placement=NODES[:3],
        readers={"w": WRITER.kx_public}, k=2, n=3, segment_size=SEG,
    )  # fmt: skip
    big = PutPlan(
        name="m", owner="w", signer=WRITER.signer, size=200 * SEG, placement=NODES[:3],
        readers={"w": WRITER.kx_public}, k=2, n=3, segment_size=SEG,
    )  # fmt: skip
    for _ in range(200):
        for put in big.segment(bytes(SEG)):
            big.stored(put.segment, put.index)
    held = [v for v in vars(big).values() if isinstance(v, bytes | bytearray)]
    assert max(len(v) for v in held) <= 32  # object id and data key only, no segment
    manifest, _ = big.finish()
    assert len(manifest.segments) == 200
    del small


def test_put_plan_state_machine_refuses_misuse() -> None:
    plan = PutPlan(
        name="m", owner="w", signer=WRITER.signer, size=SEG + 1, placement=NODES[:3],
        readers={"w": WRITER.kx_public}, k=2, n=3, segment_size=SEG,
    )  # fmt: skip
    with pytest.raises(LocalError, match="segments missing"):
        plan.finish()
    with pytest.raises(LocalError, match="must be"):
        plan.segment(b"short")
    puts = plan.segment(bytes(SEG)) + plan.segment(b"!")
    with pytest.raises(LocalError, match="no more segments"):
        plan.segment(b"!")
    with pytest.raises(LocalError, match="unacknowledged"):
        plan.finish()
    for put in puts:
        plan.stored(put.segment, put.index)
    plan.failed(0, 1, "quota_exceeded")
    with pytest.raises(LocalError, match="1 failed"):
        plan.finish()


def test_empty_object_round_trip() -> None:
    manifest, blob, grid = put_object(b"")
    assert manifest.segments == []
    assert manifest.size == 0
    plan = GetPlan.for_reader(open_manifest(blob, WRITER.verify_key), "reader", READER.kx_secret())
    assert get_object(plan, grid) == b""


# ------------------------------------------------------------------ placement


@given(
    oid=st.binary(min_size=16, max_size=16),
    domains=st.lists(st.sampled_from(["a", "b", "c", "d", ""]), min_size=6, max_size=12),
    n=st.integers(1, 6),
)
def test_placement_is_distinct_deterministic_and_spreads_domains(
    oid: bytes, domains: list[str], n: int
) -> None:
    cands = [Candidate(f"node-{i}", d) for i, d in enumerate(domains)]
    chosen = place(oid, cands, n)
    assert len(chosen) == n == len(set(chosen))
    assert place(oid, list(reversed(cands)), n) == chosen
    by_id = {c.node_id: c.domain for c in cands}
    used = [by_id[c] for c in chosen]
    distinct = len({c.domain for c in cands})
    # as many domains as possible, and no domain holds two more than another
    assert len(set(used)) == min(n, distinct)


def test_placement_moves_few_objects_when_a_node_joins() -> None:
    cands = [Candidate(f"node-{i}") for i in range(10)]
    moved = 0
    for i in range(200):
        oid = i.to_bytes(16, "big")
        before = set(place(oid, cands, 3))
        after = set(place(oid, [*cands, Candidate("node-new")], 3))
        moved += len(before - after)
    assert moved < 200 * 3 * 0.2  # about 3/11 of objects gain the new node, one shard each


def test_placement_needs_enough_nodes() -> None:
    with pytest.raises(LocalError, match="needs 3"):
        place(bytes(16), [Candidate("a"), Candidate("b")], 3)


def test_all_k_subsets_rebuild_one_segment() -> None:
    key, oid = bytes(range(32)), bytes(16)
    seg = encode_segment(key, oid, 0, 1, b"payload" * 50, 4, 6)
    for subset in itertools.combinations(range(6), 4):
        shards = {i: seg.shards[i] for i in subset}
        assert decode_segment(key, oid, 0, 1, seg.cipher_size, shards, 4, 6) == b"payload" * 50


# --------------------------------------------------------------------- repair


@settings(max_examples=30, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=2000),
    kn=st.sampled_from([(1, 2), (2, 3), (3, 5), (4, 6)]),
    seed=st.integers(0, 2**32),
)
def test_regenerated_shards_are_byte_identical(data: bytes, kn: tuple[int, int], seed: int) -> None:
    k, n = kn
    seg = encode_segment(bytes(32), bytes(16), 0, 1, data, k, n)
    gen = random.Random(seed)
    have = gen.sample(range(n), k)
    lost = [j for j in range(n) if j not in have]
    out = regenerate_shards({j: seg.shards[j] for j in have}, k, n, lost)
    assert all(out[j] == seg.shards[j] for j in lost)  # same content address, same Merkle root


def test_replacements_avoid_kept_nodes_and_used_domains() -> None:
    cands = [Candidate("a", "r1"), Candidate("b", "r2"), Candidate("c", "r3"), Candidate("d", "r1"),
             Candidate("e", "r4")]  # fmt: skip
    fresh = replacements(bytes(16), cands, ["a", "b", "c"], 1)
    assert fresh == ["e"]  # d shares a's domain; e's domain is unused
    assert set(replacements(bytes(16), cands, ["a", "b", "c"], 2)) == {"d", "e"}
    with pytest.raises(LocalError, match="repair needs 3"):
        replacements(bytes(16), cands, ["a", "b", "c"], 3)
