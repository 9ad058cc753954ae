"""RFC 6962 / RFC 9162 Merkle Tree Hash, inclusion and consistency proofs (SHA-256).

Theory of operation
-------------------

The audit log is the append-only Merkle tree of RFC 6962 §2.1, restated in
RFC 9162 §2.1 (Certificate Transparency 2.0). For a list of entries
``D[n] = {d(0), ..., d(n-1)}``::

    MTH({})      = SHA-256()                                  (EMPTY_ROOT)
    MTH({d(0)})  = SHA-256(0x00 || d(0))                      (leaf_hash)
    MTH(D[n])    = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  (node_hash)

where ``k`` is the largest power of two *smaller* than ``n``. The different
prefixes for leaves and interior nodes give second-preimage resistance
(RFC 9162 §2.1.1).

Every tree of size ``n`` decomposes into the *perfect* subtrees given by the
binary representation of ``n`` (the "peaks" of the right edge): for n = 13 =
8 + 4 + 1 they cover leaves [0, 8), [8, 12) and [12, 13). The root is these
peaks folded from the right: ``node(P8, node(P4, P1))``. The same holds for
every subtree ``[start, end)`` that appears in the RFC's recursive
definitions, because such a subtree always starts at a multiple of the
smallest power of two that is at least its size. This is the only fact the
module relies on, and it gives three ways to get a subtree hash:

1. :func:`root_from_leaf_hashes` streams the leaf hashes once, keeping a stack
   of at most ``log2(n) + 1`` peaks (a binary counter: appending leaf ``i``
   merges as many peaks as ``i`` has trailing one bits). O(n) time, O(log n)
   memory, no recursion over slices.
2. :class:`CompactRange` is the same stack kept alive between appends (like
   transparency-dev/merkle's ``compact.Range``): the sequencer appends leaf
   hashes one at a time and reads the root at any size. ``append`` also
   returns the perfect-subtree nodes it completed, ``(level, index, hash)``,
   so a store can persist them.
3. :func:`inclusion_proof_from_nodes` and :func:`consistency_proof_from_nodes`
   take a callable ``get_node(level, index)`` that returns the hash of the
   perfect subtree covering leaves ``[index * 2**level, (index + 1) * 2**level)``
   (level 0 is the leaf hash itself). A proof element that is a perfect
   subtree costs one lookup. An element on the right edge of the tree is not
   perfect (its node may never be completed); it is recomputed from its
   perfect sub-subtrees — the binary decomposition of its size, at most
   ``log2(n)`` lookups — folded from the right. The proof *plans*
   (:func:`inclusion_proof_plan`, :func:`consistency_proof_plan`) list exactly
   which ``(level, index)`` nodes are needed, so a database can fetch them in
   one query. An inclusion proof needs at most one such right-edge element,
   so it costs O(log n) lookups in all.

The list-based proof functions (:func:`inclusion_proof`,
:func:`consistency_proof`) walk the RFC 9162 §2.1.3.1 ``PATH`` and
§2.1.4.1 ``PROOF``/``SUBPROOF`` recursions iteratively to find the subtree
ranges, then hash each range with (1). Both families therefore produce
byte-identical proofs; the test-suite checks this against a literal recursive
transcription of the RFC and the certificate-transparency known-answer vectors.

Verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency)
step by step, and raises :class:`~securemesh.errors.InclusionProofError` /
:class:`~securemesh.errors.ConsistencyProofError`; it never returns a bool.
The edge cases RFC 9162 leaves open are handled as transparency-dev/merkle
does: a consistency proof from size ``m`` to the same size ``m`` is empty and
the roots must be equal; from size 0 it is empty (and the old root must be
:data:`EMPTY_ROOT`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

from securemesh.errors import ConsistencyProofError, InclusionProofError, LocalError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_PROOF_LENGTH",
    "CompactRange",
    "GetNode",
    "MerkleAccumulator",
    "Node",
    "NodeId",
    "consistency_proof",
    "consistency_proof_from_nodes",
    "consistency_proof_plan",
    "hash_plan",
    "inclusion_proof",
    "inclusion_proof_from_nodes",
    "inclusion_proof_plan",
    "leaf_hash",
    "node_hash",
    "peak_ids",
    "root",
    "root_from_leaf_hashes",
    "subtree_node_ids",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""SHA-256 output size in bytes."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() — the root of the empty tree (RFC 9162 §2.1.1)."""

MAX_PROOF_LENGTH = 64
"""No proof for a tree of fewer than 2**64 leaves has more than 64 hashes."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

_sha256 = hashlib.sha256


@dataclass(frozen=True, slots=True)
class NodeId:
    """A perfect subtree: leaves ``[index * 2**level, (index + 1) * 2**level)``."""

    level: int
    index: int


@dataclass(slots=True)
class Node:
    """A perfect subtree and its hash, as produced by :meth:`CompactRange.append`.

    A plain value (not frozen: a frozen dataclass costs 3x more to build, and
    ``append`` builds two per leaf on average in the sequencer's hot loop).
    """

    level: int
    index: int
    hash: bytes


GetNode = Callable[[int, int], bytes]
"""``get_node(level, index) -> hash`` of a perfect subtree (level 0 = leaf hash)."""


# ------------------------------------------------------------------ hashing


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d) (RFC 9162 §2.1.1)."""
    return _sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right) (RFC 9162 §2.1.1)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The ``k`` of RFC 9162 §2.1.1: the largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _fold_from_right(peaks: list[bytes]) -> bytes:
    """node(P0, node(P1, ... node(Pk-1, Pk))) for peaks ordered left to right."""
    if not peaks:
        return EMPTY_ROOT
    acc = peaks[-1]
    for peak in reversed(peaks[:-1]):
        acc = _sha256(_NODE_PREFIX + peak + acc).digest()
    return acc


def _root_of_iterable(leaf_hashes: Iterable[bytes]) -> bytes:
    """Stream leaf hashes into a peak stack (binary counter), then fold the peaks."""
    sha256 = _sha256
    prefix = _NODE_PREFIX
    peaks: list[bytes] = []
    push = peaks.append
    pop = peaks.pop
    for count, leaf in enumerate(leaf_hashes):
        h = leaf
        j = count
        while j & 1:
            h = sha256(prefix + pop() + h).digest()
            j >>= 1
        push(h)
    return _fold_from_right(peaks)


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves; O(n) time and O(log n) extra memory."""
    return _root_of_iterable(leaf_hashes)


def root(entries: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over raw entries (RFC 9162 §2.1.1)."""
    return _root_of_iterable(leaf_hash(e) for e in entries)


def _range_root(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    if start == 0 and end == len(leaf_hashes):
        return _root_of_iterable(leaf_hashes)
    return _root_of_iterable(islice(leaf_hashes, start, end))


# ------------------------------------------------------------- compact range


def peak_ids(size: int) -> list[NodeId]:
    """The perfect subtrees whose right fold is the root of a tree of ``size`` leaves.

    Ordered left to right (largest first), one per set bit of ``size``.
    """
    _check_size(size, "size")
    return subtree_node_ids(0, size)


class CompactRange:
    """An append-only Merkle accumulator over ``[0, size)`` keeping only the peaks.

    After ``n`` appends it holds one hash per set bit of ``n`` (the right-edge
    perfect subtrees, largest first), like transparency-dev/merkle's
    ``compact.Range`` with begin = 0. :meth:`root` folds them from the right.
    """

    __slots__ = ("_peaks", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._peaks: list[bytes] = []

    @classmethod
    def from_peaks(cls, size: int, peaks: Sequence[bytes]) -> CompactRange:
        """Resume from stored peaks (hashes of :func:`peak_ids` ``(size)``, in order)."""
        _check_size(size, "size")
        if len(peaks) != size.bit_count():
            raise LocalError(f"a tree of size {size} has {size.bit_count()} peaks")
        for p in peaks:
            _check_hash(p, LocalError, "peak")
        cr = cls()
        cr._size = size
        cr._peaks = [bytes(p) for p in peaks]
        return cr

    @classmethod
    def from_nodes(cls, size: int, get_node: GetNode) -> CompactRange:
        """Resume from a node store: looks up the ``size.bit_count()`` peaks."""
        ids = peak_ids(size)
        return cls.from_peaks(size, [get_node(n.level, n.index) for n in ids])

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def peaks(self) -> tuple[bytes, ...]:
        """Hashes of the perfect subtrees :func:`peak_ids` ``(size)``, left to right."""
        return tuple(self._peaks)

    def append(self, leaf_hash: bytes) -> list[Node]:
        """Append one leaf hash; return the perfect-subtree nodes this completed.

        The first returned node is the leaf itself (level 0); then one node per
        merge, ascending in level.
        """
        out: list[tuple[int, int, bytes]] = []
        self.append_into(leaf_hash, out)
        return [Node(level, index, h) for level, index, h in out]

    def append_into(self, leaf_hash: bytes, out: list[tuple[int, int, bytes]]) -> None:
        """:meth:`append`, adding the completed nodes to ``out`` as ``(level, index, hash)``.

        The sequencer's form: rows ready for the node table, no objects per node.
        """
        if type(leaf_hash) is not bytes or len(leaf_hash) != HASH_SIZE:
            _check_hash(leaf_hash, LocalError, "leaf hash")
            leaf_hash = bytes(leaf_hash)
        index = self._size
        h = leaf_hash
        out.append((0, index, h))
        if index & 1:
            pop = self._peaks.pop
            level = 0
            j = index
            while j & 1:
                h = _sha256(_NODE_PREFIX + pop() + h).digest()
                j >>= 1
                level += 1
                out.append((level, j, h))
        self._peaks.append(h)
        self._size = index + 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> list[Node]:
        """Append several leaf hashes; return all completed nodes in order."""
        out: list[Node] = []
        for h in leaf_hashes:
            out.extend(self.append(h))
        return out

    def root(self) -> bytes:
        """MTH of the ``size`` leaves appended so far."""
        return _fold_from_right(self._peaks)

    def copy(self) -> CompactRange:
        return CompactRange.from_peaks(self._size, self._peaks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._peaks == other._peaks

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={self.root().hex()[:16]}…)"


MerkleAccumulator = CompactRange
"""Alias: the same append-only accumulator under a descriptive name."""


# ---------------------------------------------------------- proof structure


def subtree_node_ids(start: int, end: int) -> list[NodeId]:
    """Perfect subtrees (largest first) whose right fold is MTH(D[start:end]).

    ``[start, end)`` must be a subtree of the RFC 9162 recursion, i.e. aligned:
    ``start`` is a multiple of the smallest power of two >= ``end - start``.
    """
    if not 0 <= start <= end:
        raise LocalError(f"bad subtree range [{start}, {end})")
    ids: list[NodeId] = []
    pos = start
    while pos < end:
        level = (end - pos).bit_length() - 1
        if pos & ((1 << level) - 1):
            raise LocalError(f"range [{start}, {end}) is not an RFC 6962 subtree")
        ids.append(NodeId(level, pos >> level))
        pos += 1 << level
    return ids


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Subtree ranges of PATH(index, D[size]) (RFC 9162 §2.1.3.1), leaf side first.

    PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])   if m < k
                  = PATH(m - k, D[k:n]) : MTH(D[0:k]) if m >= k
    """
    _check_size(size, "tree size")
    if type(index) is not int or not 0 <= index < size:
        raise LocalError(f"leaf index {index} is outside a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        mid = start + _largest_power_of_two_below(end - start)
        if index < mid:
            ranges.append((mid, end))
            end = mid
        else:
            ranges.append((start, mid))
            start = mid
    ranges.reverse()
    return ranges


def _consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Subtree ranges of PROOF(m, D[n]) = SUBPROOF(m, D[n], true) (RFC 9162 §2.1.4.1).

    SUBPROOF(m, D[m], true)  = {}
    SUBPROOF(m, D[m], false) = {MTH(D[m])}
    SUBPROOF(m, D[n], b)     = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])          if m <= k
                             = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])  if m > k

    The proof for m = 0 or m = n is empty.
    """
    _check_size(old_size, "old size")
    _check_size(new_size, "new size")
    if old_size > new_size:
        raise LocalError(f"old size {old_size} is larger than new size {new_size}")
    ranges: list[tuple[int, int]] = []
    if old_size in (0, new_size):
        return ranges
    m = old_size
    start, end = 0, new_size
    complete = True  # the "b" flag of SUBPROOF
    while m != end - start:
        k = _largest_power_of_two_below(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            m -= k
            complete = False
    if not complete:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def inclusion_proof_plan(index: int, tree_size: int) -> list[list[NodeId]]:
    """For each hash of the inclusion proof, the perfect nodes folded to make it."""
    return [subtree_node_ids(s, e) for s, e in _inclusion_ranges(index, tree_size)]


def consistency_proof_plan(old_size: int, new_size: int) -> list[list[NodeId]]:
    """For each hash of the consistency proof, the perfect nodes folded to make it."""
    return [subtree_node_ids(s, e) for s, e in _consistency_ranges(old_size, new_size)]


def hash_plan(plan: Sequence[Sequence[NodeId]], get_node: GetNode) -> list[bytes]:
    """Turn a proof plan into proof hashes using ``get_node(level, index)``."""
    out: list[bytes] = []
    for group in plan:
        hashes = []
        for node in group:
            h = get_node(node.level, node.index)
            _check_hash(h, LocalError, f"node ({node.level}, {node.index})")
            hashes.append(bytes(h))
        out.append(_fold_from_right(hashes))
    return out


# ---------------------------------------------------------------- proofs


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The audit path PATH(index, D[n]) for a tree of ``len(leaf_hashes)`` leaves.

    RFC 9162 §2.1.3.1; hashes are ordered from the leaf towards the root.
    O(n) hashing; use :func:`inclusion_proof_from_nodes` with a node store for
    O(log n).
    """
    return [_range_root(leaf_hashes, s, e) for s, e in _inclusion_ranges(index, len(leaf_hashes))]


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(old_size, D[n]) for a tree of ``len(leaf_hashes)`` leaves (RFC 9162 §2.1.4.1)."""
    return [
        _range_root(leaf_hashes, s, e) for s, e in _consistency_ranges(old_size, len(leaf_hashes))
    ]


def inclusion_proof_from_nodes(index: int, tree_size: int, get_node: GetNode) -> list[bytes]:
    """Same result as :func:`inclusion_proof`, reading perfect-subtree hashes from a store.

    Only nodes that are complete in a tree of ``tree_size`` leaves are requested.
    """
    return hash_plan(inclusion_proof_plan(index, tree_size), get_node)


def consistency_proof_from_nodes(old_size: int, new_size: int, get_node: GetNode) -> list[bytes]:
    """Same result as :func:`consistency_proof`, reading perfect-subtree hashes from a store."""
    return hash_plan(consistency_proof_plan(old_size, new_size), get_node)


# ---------------------------------------------------------- verification


def _check_size(n: int, what: str) -> None:
    if type(n) is not int or n < 0:
        raise LocalError(f"{what} must be a non-negative int, got {n!r}")


def _check_hash(h: object, exc: type[Exception], what: str) -> None:
    if not isinstance(h, bytes | bytearray | memoryview) or len(h) != HASH_SIZE:
        raise exc(f"{what} must be {HASH_SIZE} bytes")


def _check_proof_inputs(
    err: type[Exception],
    sizes: dict[str, int],
    hashes: dict[str, bytes],
    proof: Sequence[bytes],
) -> None:
    for what, value in sizes.items():
        if type(value) is not int or value < 0:
            raise err(f"{what} must be a non-negative int")
    for what, h in hashes.items():
        _check_hash(h, err, what)
    if len(proof) > MAX_PROOF_LENGTH:
        raise err("proof is too long")
    for p in proof:
        _check_hash(p, err, "proof hash")


def _verify_trivial_consistency(
    old_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """The cases RFC 9162 §2.1.4.2 leaves out: from the empty tree, and to the same size."""
    if proof:
        raise ConsistencyProofError("proof must be empty")
    if old_size == 0:
        if old_root != EMPTY_ROOT:
            raise ConsistencyProofError("the root of the empty tree is SHA-256()")
    elif old_root != new_root:
        raise ConsistencyProofError("roots of equal-size trees differ")


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    RFC 9162 §2.1.3.2, step by step. Returns ``None`` on success and raises
    :class:`~securemesh.errors.InclusionProofError` otherwise.
    """
    err = InclusionProofError
    _check_proof_inputs(
        err,
        {"leaf index": index, "tree size": tree_size},
        {"leaf hash": leaf_hash, "root": root},
        proof,
    )
    # 1. leaf_index must be smaller than tree_size.
    if index >= tree_size:
        raise err(f"leaf index {index} is outside a tree of size {tree_size}")
    # 2. fn = leaf_index, sn = tree_size - 1.  3. r = hash.
    fn, sn = index, tree_size - 1
    r = bytes(leaf_hash)
    # 4. for each p in inclusion_path:
    for p in proof:
        # a. if sn is 0, the proof is too long.
        if sn == 0:
            raise err("proof is longer than the path to the root")
        # b. if LSB(fn) is set, or fn equals sn:
        if fn & 1 or fn == sn:
            r = _sha256(_NODE_PREFIX + p + r).digest()
            # If LSB(fn) is not set, right-shift fn and sn until LSB(fn) is set or fn is 0.
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(_NODE_PREFIX + r + p).digest()
        # c. right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. sn must be 0 and r must equal the root.
    if sn != 0:
        raise err("proof is shorter than the path to the root")
    if r != root:
        raise err("computed root does not match")


def verify_consistency(  # noqa: PLR0912 -- a literal transcription of RFC 9162 §2.1.4.2
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree ``(new_size, new_root)`` extends ``(old_size, old_root)``.

    RFC 9162 §2.1.4.2, step by step, plus the cases the RFC leaves to the
    caller: ``old_size == new_size`` needs an empty proof and equal roots;
    ``old_size == 0`` needs an empty proof and ``old_root == EMPTY_ROOT``.
    Raises :class:`~securemesh.errors.ConsistencyProofError`.
    """
    err = ConsistencyProofError
    _check_proof_inputs(
        err,
        {"old size": old_size, "new size": new_size},
        {"old root": old_root, "new root": new_root},
        proof,
    )
    if old_size > new_size:
        raise err(f"old size {old_size} is larger than new size {new_size}")
    if old_size in (0, new_size):
        _verify_trivial_consistency(old_size, old_root, new_root, proof)
        return
    # 1. An empty consistency path fails.
    if not proof:
        raise err("proof is empty")
    path = [bytes(p) for p in proof]
    # 2. If first is an exact power of 2, prepend first_hash.
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 4. If LSB(fn) is set, right-shift fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = consistency_path[0].
    fr = sr = path[0]
    # 6. For each c in consistency_path[1:]:
    for c in path[1:]:
        # a. if sn is 0, the proof is too long.
        if sn == 0:
            raise err("proof is longer than needed")
        # b. if LSB(fn) is set, or fn equals sn:
        if fn & 1 or fn == sn:
            fr = _sha256(_NODE_PREFIX + c + fr).digest()
            sr = _sha256(_NODE_PREFIX + c + sr).digest()
            # If LSB(fn) is not set, right-shift fn and sn until LSB(fn) is set or fn is 0.
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = _sha256(_NODE_PREFIX + sr + c).digest()
        # c. right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. fr == first_hash, sr == second_hash and sn == 0.
    if sn != 0:
        raise err("proof is shorter than needed")
    if fr != old_root:
        raise err("old root does not match")
    if sr != new_root:
        raise err("new root does not match")
