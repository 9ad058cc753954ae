"""Tests for securemesh.audit.merkle: RFC 6962/9162 known answers, a reference model, properties."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.audit import merkle
from securemesh.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    MerkleAccumulator,
    Node,
    NodeId,
    consistency_proof,
    consistency_proof_from_nodes,
    consistency_proof_plan,
    inclusion_proof,
    inclusion_proof_from_nodes,
    inclusion_proof_plan,
    leaf_hash,
    node_hash,
    peak_ids,
    root,
    root_from_leaf_hashes,
    subtree_node_ids,
    verify_consistency,
    verify_inclusion,
)
from securemesh.errors import (
    ConsistencyProofError,
    InclusionProofError,
    LocalError,
    ProofError,
    RemoteError,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "ct_vectors.json").read_text(encoding="utf-8")
)
LEAVES = [bytes.fromhex(h) for h in VECTORS["leaf_inputs_hex"]]
ROOTS = [bytes.fromhex(h) for h in VECTORS["roots_by_size"]]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


# ------------------------------------------------------------ reference model
# A literal, recursive transcription of RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1.


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) <= 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return [] if m in (0, len(d)) else ref_subproof(m, d, True)


def entries_for(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


def node_store(leaf_hashes: list[bytes]) -> Callable[[int, int], bytes]:
    """A dict-backed ``get_node`` holding only the perfect nodes a log would have stored."""
    cr = CompactRange()
    nodes: dict[tuple[int, int], bytes] = {}
    for h in leaf_hashes:
        for nd in cr.append(h):
            nodes[(nd.level, nd.index)] = nd.hash

    def get_node(level: int, index: int) -> bytes:
        return nodes[(level, index)]

    return get_node


# ------------------------------------------------------------ known answers


def test_constants() -> None:
    assert HASH_SIZE == 32
    assert EMPTY_ROOT == ROOTS[0] == hashlib.sha256(b"").digest()


def test_leaf_hashes_match_vectors() -> None:
    level0 = [bytes.fromhex(h) for h in VECTORS["node_hashes_by_level"][0]]
    assert [leaf_hash(e) for e in LEAVES] == level0


@pytest.mark.parametrize("size", range(9))
def test_roots_match_vectors(size: int) -> None:
    d = LEAVES[:size]
    hashes = [leaf_hash(e) for e in d]
    assert root(d) == ROOTS[size]
    assert root_from_leaf_hashes(hashes) == ROOTS[size]
    cr = CompactRange()
    cr.extend(hashes)
    assert cr.size == size
    assert cr.root() == ROOTS[size]


def test_append_into_emits_the_same_nodes_as_append() -> None:
    a, b = CompactRange(), CompactRange()
    rows: list[tuple[int, int, bytes]] = []
    for i in range(70):
        h = leaf_hash(i.to_bytes(2, "big"))
        nodes = a.append(h)
        start = len(rows)
        b.append_into(h, rows)
        assert rows[start:] == [(n.level, n.index, n.hash) for n in nodes]
        assert (b.size, b.peaks, b.root()) == (a.size, a.peaks, a.root())


def test_compact_range_emits_the_published_node_hashes() -> None:
    cr = CompactRange()
    emitted = cr.extend(leaf_hash(e) for e in LEAVES)
    by_level: dict[int, list[tuple[int, bytes]]] = {}
    for nd in emitted:
        by_level.setdefault(nd.level, []).append((nd.index, nd.hash))
    for level, hexes in enumerate(VECTORS["node_hashes_by_level"]):
        assert by_level[level] == [(i, bytes.fromhex(h)) for i, h in enumerate(hexes)]
    level1 = by_level[1]
    assert node_hash(by_level[0][0][1], by_level[0][1][1]) == level1[0][1]


@pytest.mark.parametrize("vec", VECTORS["inclusion_proofs"], ids=str)
def test_inclusion_proofs_match_vectors(vec: dict[str, Any]) -> None:
    index, size = vec["index"], vec["tree_size"]
    expected = [bytes.fromhex(h) for h in vec["proof"]]
    hashes = [leaf_hash(e) for e in LEAVES[:size]]
    assert inclusion_proof(index, hashes) == expected
    assert inclusion_proof_from_nodes(index, size, node_store(hashes)) == expected
    verify_inclusion(hashes[index], index, size, expected, ROOTS[size])
    for probe in corrupt_inclusion(hashes[index], index, size, expected, ROOTS[size]):
        with pytest.raises(InclusionProofError):
            verify_inclusion(*probe)


@pytest.mark.parametrize("vec", VECTORS["consistency_proofs"], ids=str)
def test_consistency_proofs_match_vectors(vec: dict[str, Any]) -> None:
    m, n = vec["old_size"], vec["new_size"]
    expected = [bytes.fromhex(h) for h in vec["proof"]]
    hashes = [leaf_hash(e) for e in LEAVES[:n]]
    assert consistency_proof(m, hashes) == expected
    assert consistency_proof_from_nodes(m, n, node_store(hashes)) == expected
    verify_consistency(m, n, ROOTS[m], ROOTS[n], expected)
    if expected:
        for probe in corrupt_consistency(m, n, ROOTS[m], ROOTS[n], expected):
            with pytest.raises(ConsistencyProofError):
                verify_consistency(*probe)


def test_subtree_hash_rolling_vector() -> None:
    """draft-ietf-plants-merkle-tree-certs subtree vectors, via transparency-dev/merkle."""
    vec = VECTORS["subtree_hash_rolling"]
    top = vec["max_end"]
    d = [bytes([i]) for i in range(top)]
    hashes = [leaf_hash(e) for e in d]
    get_node = node_store(hashes)
    rolling = hashlib.sha256()
    for end in range(1, top + 1):
        for start in range(end):
            size = end - start
            bit_ceil = 1 << (size - 1).bit_length()
            if start and start % bit_ceil:
                continue
            h = root_from_leaf_hashes(hashes[start:end])
            # The node-store route: fold the perfect sub-subtrees from the right.
            ids = subtree_node_ids(start, end)
            assert merkle.hash_plan([ids], get_node) == [h]
            rolling.update(
                vec["line_format"].format(start=start, end=end, hash_hex=h.hex()).encode()
            )
    assert rolling.hexdigest() == vec["sha256"]


# ------------------------------------------------------------ corruption probes
# After transparency-dev/merkle proof/verify_test.go corruptInclusionProof / ...Consistency...

InclusionArgs = tuple[bytes, int, int, list[bytes], bytes]
ConsistencyArgs = tuple[int, int, bytes, bytes, list[bytes]]


def corrupt_inclusion(
    lh: bytes, index: int, size: int, proof: list[bytes], rt: bytes
) -> list[InclusionArgs]:
    probes: list[InclusionArgs] = [
        (lh, index + 1, size, proof, rt),
        (lh, index ^ 2, size, proof, rt),
        (lh, index, size * 2, proof, rt),
        (lh, index, size // 2, proof, rt),
        (SOME_HASH, index, size, proof, rt),
        (lh, index, size, proof, EMPTY_ROOT),
        (lh, index, size, proof, SOME_HASH),
        (lh, index, size, [*proof, rt], rt),
        (lh, index, size, [rt, *proof], rt),
        (lh, index, size, [*proof, b""], rt),
        (b"WrongLeaf", index, size, proof, rt),
    ]
    if index > 0:
        probes.append((lh, index - 1, size, proof, rt))
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((lh, index, size, bad, rt))
    if proof:
        probes.append((lh, index, size, proof[:-1], rt))
    if len(proof) > 1:
        probes.append((lh, index, size, [proof[0], SOME_HASH, *proof[1:]], rt))
    # A flipped bit in the leaf or root.
    probes.append((bytes([lh[0] ^ 1]) + lh[1:], index, size, proof, rt))
    probes.append((lh, index, size, proof, rt[:-1] + bytes([rt[-1] ^ 1])))
    return [
        p
        for p in probes
        if not (p[1] == index and p[2] == size and p[3] == proof and p[0] == lh and p[4] == rt)
    ]


def corrupt_consistency(
    m: int, n: int, r1: bytes, r2: bytes, proof: list[bytes]
) -> list[ConsistencyArgs]:
    probes: list[ConsistencyArgs] = [
        (m - 1, n, r1, r2, proof),
        (m + 1, n, r1, r2, proof),
        (m ^ 2, n, r1, r2, proof),
        (m, n * 2, r1, r2, proof),
        (m, n // 2, r1, r2, proof),
        (m, n, SOME_HASH, r2, proof),
        (m, n, r1, SOME_HASH, proof),
        (m, n, r2, r1, proof),
        (m, n, r1, r2, []),
        (m, n, r1, r2, [*proof, b""]),
        (m, n, r1, r2, [*proof, r1]),
        (m, n, r1, r2, [*proof, r2]),
        (m, n, r1, r2, [b"", *proof]),
        (m, n, r1, r2, [r1, *proof]),
        (m, n, r1, r2, [r2, *proof]),
        (m, n, r1, r2, [proof[0], *proof]),
        (m, n, r1, r2, proof[:-1]),
        (m, n, b"WrongRoot", r2, proof),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((m, n, r1, r2, bad))
    # (m ^ 2 may equal a consistent size pair with the same proof only by accident; filter.)
    return [p for p in probes if not (p[0] == m and p[1] == n and p[2:] == (r1, r2, proof))]


# ------------------------------------------------------------ edge cases


def test_trivial_consistency_cases() -> None:
    r1 = ROOTS[1]
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [])
    verify_consistency(1, 1, r1, r1, [])
    cases: list[ConsistencyArgs] = [
        (1, 1, r1, ROOTS[2], []),  # equal sizes, different roots
        (0, 1, SOME_HASH, r1, []),  # size 0 must have the empty root
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),  # non-empty proof
        (0, 1, EMPTY_ROOT, r1, [EMPTY_ROOT]),
        (1, 1, r1, r1, [EMPTY_ROOT]),
        (1, 0, r1, EMPTY_ROOT, []),  # time travel
        (2, 1, ROOTS[2], r1, []),
        (1, 2, r1, ROOTS[2], []),  # empty proof for a real extension
    ]
    for args in cases:
        with pytest.raises(ConsistencyProofError):
            verify_consistency(*args)


def test_verify_inclusion_rejects_bad_shapes() -> None:
    h = leaf_hash(b"data")
    verify_inclusion(h, 0, 1, [], h)
    for args in [
        (h, 0, 0, [], EMPTY_ROOT),
        (h, 1, 0, [], EMPTY_ROOT),
        (h, 2, 1, [], h),
        (h, -1, 1, [], h),
        (h, 0, 1, [], b""),
        (b"", 0, 1, [], h),
        (h, 0, 1, [h] * 65, h),
        (h, True, 2, [h], h),
    ]:
        with pytest.raises(InclusionProofError):
            verify_inclusion(*args)


def test_proof_errors_are_remote_errors_with_reasons() -> None:
    assert issubclass(InclusionProofError, ProofError)
    assert issubclass(ConsistencyProofError, ProofError)
    assert issubclass(ProofError, RemoteError)
    assert InclusionProofError.reason == "bad_inclusion_proof"
    assert ConsistencyProofError.reason == "bad_consistency_proof"


def test_proof_generation_rejects_misuse() -> None:
    hashes = [leaf_hash(e) for e in LEAVES]
    with pytest.raises(LocalError):
        inclusion_proof(8, hashes)
    with pytest.raises(LocalError):
        inclusion_proof(-1, hashes)
    with pytest.raises(LocalError):
        inclusion_proof(0, [])
    with pytest.raises(LocalError):
        consistency_proof(9, hashes)
    with pytest.raises(LocalError):
        consistency_proof_plan(-1, 3)
    with pytest.raises(LocalError):
        subtree_node_ids(1, 3)  # not an RFC 6962 subtree
    with pytest.raises(LocalError):
        inclusion_proof_from_nodes(0, 2, lambda level, index: b"short")


def test_peak_ids_and_resume() -> None:
    assert peak_ids(0) == []
    assert peak_ids(13) == [NodeId(3, 0), NodeId(2, 2), NodeId(0, 12)]
    hashes = [leaf_hash(e) for e in entries_for(13)]
    get_node = node_store(hashes)
    cr = CompactRange.from_nodes(13, get_node)
    assert cr.root() == root_from_leaf_hashes(hashes)
    assert len(cr.peaks) == 3
    fresh = CompactRange()
    fresh.extend(hashes)
    assert cr == fresh
    copy = cr.copy()
    extra = leaf_hash(b"more")
    nodes = copy.append(extra)
    assert nodes[0] == Node(0, 13, extra)
    assert [(nd.level, nd.index) for nd in nodes] == [(0, 13), (1, 6)]
    assert copy.root() == root_from_leaf_hashes([*hashes, extra])
    assert cr.size == 13  # the copy is independent
    with pytest.raises(LocalError):
        CompactRange.from_peaks(13, cr.peaks[:2])
    with pytest.raises(LocalError):
        cr.append(b"short")
    assert MerkleAccumulator is CompactRange
    assert "size=13" in repr(cr)


def test_append_reports_completed_nodes() -> None:
    cr = CompactRange()
    hashes = [leaf_hash(e) for e in entries_for(8)]
    cr.extend(hashes[:7])
    nodes = cr.append(hashes[7])
    assert [(nd.level, nd.index) for nd in nodes] == [(0, 7), (1, 3), (2, 1), (3, 0)]
    assert nodes[-1].hash == cr.root() == root_from_leaf_hashes(hashes)


def test_inclusion_plan_needs_one_right_edge_fold_at_most() -> None:
    for size in (1, 2, 3, 1000, 1_000_003, (1 << 40) + 12345):
        for index in {0, size // 3, size - 1}:
            plan = inclusion_proof_plan(index, size)
            assert sum(len(group) > 1 for group in plan) <= 1
            assert sum(len(group) for group in plan) <= 2 * size.bit_length()


def test_large_tree_matches_accumulator() -> None:
    hashes = [leaf_hash(e) for e in entries_for(70_001)]
    cr = CompactRange()
    cr.extend(hashes)
    r = root_from_leaf_hashes(hashes)
    assert cr.root() == r
    get_node = node_store(hashes)
    for index in (0, 1, 65_535, 65_536, 70_000):
        p = inclusion_proof_from_nodes(index, len(hashes), get_node)
        assert p == inclusion_proof(index, hashes)
        verify_inclusion(hashes[index], index, len(hashes), p, r)
    for old in (1, 4096, 65_536, 69_999):
        p = consistency_proof_from_nodes(old, len(hashes), get_node)
        assert p == consistency_proof(old, hashes)
        verify_consistency(old, len(hashes), root_from_leaf_hashes(hashes[:old]), r, p)


# ------------------------------------------------------------ exhaustive + properties


def test_exhaustive_small_trees_against_reference() -> None:
    for n in range(0, 40):
        d = entries_for(n)
        hashes = [leaf_hash(e) for e in d]
        r = root(d)
        assert r == ref_mth(d)
        get_node = node_store(hashes)
        for i in range(n):
            p = inclusion_proof(i, hashes)
            assert p == ref_path(i, d) == inclusion_proof_from_nodes(i, n, get_node)
            verify_inclusion(hashes[i], i, n, p, r)
        for m in range(n + 1):
            p = consistency_proof(m, hashes)
            assert p == ref_proof(m, d) == consistency_proof_from_nodes(m, n, get_node)
            verify_consistency(m, n, ref_mth(d[:m]), r, p)


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[list[bytes], int]:
    # Unique entries (log entries carry unique event ids): with duplicates, "wrong
    # index" can legitimately verify, since identical leaves have identical paths.
    entries = draw(st.lists(st.binary(max_size=8), min_size=1, max_size=300, unique=True))
    return entries, draw(st.integers(0, len(entries) - 1))


@settings(max_examples=150, deadline=None)
@given(tree_and_index(), st.data())
def test_inclusion_property(ti: tuple[list[bytes], int], data: st.DataObject) -> None:
    entries, index = ti
    n = len(entries)
    hashes = [leaf_hash(e) for e in entries]
    r = root(entries)
    p = inclusion_proof(index, hashes)
    assert p == inclusion_proof_from_nodes(index, n, node_store(hashes))
    verify_inclusion(hashes[index], index, n, p, r)
    # Any single modification makes it fail.
    other = data.draw(st.integers(0, n - 1).filter(lambda j: hashes[j] != hashes[index]), "other")
    with pytest.raises(InclusionProofError):
        verify_inclusion(hashes[other], index, n, p, r)
    for probe in corrupt_inclusion(hashes[index], index, n, p, r):
        with pytest.raises(InclusionProofError):
            verify_inclusion(*probe)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300), st.data())
def test_consistency_property(n: int, data: st.DataObject) -> None:
    m = data.draw(st.integers(1, n), "old size")
    d = entries_for(n)
    hashes = [leaf_hash(e) for e in d]
    r1, r2 = root(d[:m]), root(d)
    p = consistency_proof(m, hashes)
    assert p == consistency_proof_from_nodes(m, n, node_store(hashes))
    verify_consistency(m, n, r1, r2, p)
    if p:
        for probe in corrupt_consistency(m, n, r1, r2, p):
            with pytest.raises(ConsistencyProofError):
                verify_consistency(*probe)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=4), max_size=200))
def test_roots_agree(entries: list[bytes]) -> None:
    hashes = [leaf_hash(e) for e in entries]
    cr = CompactRange()
    for i, h in enumerate(hashes):
        cr.append(h)
        assert cr.size == i + 1
    assert root(entries) == root_from_leaf_hashes(hashes) == cr.root() == ref_mth(entries)
    assert CompactRange.from_peaks(cr.size, cr.peaks) == cr
    assert len(cr.peaks) == len(peak_ids(len(entries)))
