"""Replay window (RFC 6479 bitmap) and the bounded multi-sender guard with a clock-skew bound."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from wire_testlib import NOW_MS, SIGNER, signed

from securemesh.errors import (
    ClockSkewError,
    ConfigError,
    LocalError,
    ReplayedMessage,
    ReplayError,
    StaleMessage,
)
from securemesh.wire import ReplayGuard, ReplayWindow, decode

WINDOW = 8192


class ReferenceWindow:
    """The obviously correct (but unbounded) model: a set and a maximum."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.seen: set[int] = set()
        self.top: int | None = None

    def verdict(self, seq: int) -> type[ReplayError] | None:
        if self.top is None or seq > self.top:
            return None
        if self.top - seq >= self.window:
            return StaleMessage
        if seq in self.seen:
            return ReplayedMessage
        return None

    def accept(self, seq: int) -> None:
        self.seen.add(seq)
        self.top = seq if self.top is None else max(self.top, seq)


def test_default_window_is_8192() -> None:
    assert ReplayWindow().window_size == WINDOW
    assert ReplayWindow().high_water_mark is None


def test_basic_accept_replay_stale() -> None:
    w = ReplayWindow()
    w.accept(100)
    with pytest.raises(ReplayedMessage):
        w.check(100)
    with pytest.raises(ReplayedMessage):
        w.accept(100)
    w.accept(99)  # reordering inside the window is fine
    w.accept(100 + WINDOW)
    with pytest.raises(StaleMessage):
        w.check(100)  # exactly WINDOW behind: too old to tell
    w.accept(101)  # WINDOW - 1 behind: still tracked
    with pytest.raises(StaleMessage):
        w.check(0)


def test_check_changes_nothing() -> None:
    w = ReplayWindow()
    for _ in range(3):
        w.check(5)
    assert w.high_water_mark is None
    w.accept(5)
    assert w.high_water_mark == 5


def test_big_jumps_and_u64_edges() -> None:
    w = ReplayWindow()
    w.accept(0)
    w.accept(10**12)
    w.accept(10**12 - 1)
    with pytest.raises(StaleMessage):
        w.check(1)
    w.accept(2**64 - 1)
    with pytest.raises(ReplayedMessage):
        w.check(2**64 - 1)
    w.accept(2**64 - 2)
    for bad in (-1, 2**64, True, "1"):
        with pytest.raises(LocalError):
            w.check(bad)  # type: ignore[arg-type]


def test_invalid_window_configuration() -> None:
    with pytest.raises(ConfigError):
        ReplayWindow(blocks=1)


@settings(max_examples=300, deadline=None)
@given(
    blocks=st.sampled_from([2, 3, 5]),
    steps=st.lists(st.integers(min_value=0, max_value=1000), max_size=200),
)
def test_window_matches_the_reference_model_exactly(blocks: int, steps: list[int]) -> None:
    """Small windows (64-256) so that every edge case is reached."""
    w = ReplayWindow(blocks=blocks)
    ref = ReferenceWindow(w.window_size)
    accepted: list[int] = []
    for seq in steps:
        expected = ref.verdict(seq)
        if expected is None:
            w.check(seq)
            w.accept(seq)
            ref.accept(seq)
            accepted.append(seq)
        else:
            with pytest.raises(expected):
                w.check(seq)
            with pytest.raises(expected):
                w.accept(seq)
    assert len(accepted) == len(set(accepted)), "a sequence was accepted twice"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3 * WINDOW), max_size=300))
def test_default_window_never_accepts_twice(steps: list[int]) -> None:
    w = ReplayWindow()
    accepted: set[int] = set()
    for seq in steps:
        try:
            w.accept(seq)
        except ReplayError:
            continue
        assert seq not in accepted
        accepted.add(seq)


@settings(max_examples=200, deadline=None)
@given(
    base=st.integers(min_value=0, max_value=2**64 - WINDOW),
    data=st.data(),
)
def test_any_permutation_of_distinct_sequences_within_the_window_is_accepted(
    base: int, data: st.DataObject
) -> None:
    offsets = data.draw(
        st.lists(st.integers(min_value=0, max_value=WINDOW - 1), unique=True, max_size=200)
    )
    order = data.draw(st.permutations(offsets))
    w = ReplayWindow()
    for off in order:
        w.accept(base + off)
    for off in order:
        with pytest.raises(ReplayedMessage):
            w.check(base + off)


@settings(max_examples=100, deadline=None)
@given(top=st.integers(min_value=WINDOW, max_value=2**63), behind=st.integers(min_value=WINDOW))
def test_anything_a_window_or_more_behind_is_stale(top: int, behind: int) -> None:
    w = ReplayWindow()
    w.accept(top)
    seq = top - behind
    if seq >= 0:
        with pytest.raises(StaleMessage):
            w.check(seq)


def test_restored_floor_refuses_everything_at_or_below_it() -> None:
    w = ReplayWindow(floor=500)
    assert w.high_water_mark == 500
    for seq in (0, 499, 500):
        with pytest.raises(StaleMessage):
            w.check(seq)
    w.accept(501)
    w.accept(600)
    with pytest.raises(StaleMessage):
        w.check(500)


# --------------------------------------------------------------------- the guard


def test_guard_bounds_clock_skew_both_ways() -> None:
    g = ReplayGuard()
    g.check("a", 1, NOW_MS + 120_000, now_ms=NOW_MS)
    g.check("a", 1, NOW_MS - 120_000, now_ms=NOW_MS)
    with pytest.raises(ClockSkewError):
        g.check("a", 1, NOW_MS + 120_001, now_ms=NOW_MS)
    with pytest.raises(ClockSkewError):
        g.check("a", 1, NOW_MS - 120_001, now_ms=NOW_MS)
    tight = ReplayGuard(max_skew_ms=10)
    with pytest.raises(ClockSkewError):
        tight.check("a", 1, NOW_MS + 11, now_ms=NOW_MS)


def test_guard_keeps_senders_apart() -> None:
    g = ReplayGuard()
    g.accept("a", 1)
    g.accept("b", 1)
    with pytest.raises(ReplayedMessage):
        g.check("a", 1, NOW_MS, now_ms=NOW_MS)
    g.check("c", 1, NOW_MS, now_ms=NOW_MS)
    assert len(g) == 2


def test_guard_eviction_keeps_the_high_water_mark() -> None:
    g = ReplayGuard(max_senders=2)
    g.accept("a", 50)
    g.accept("a", 40)
    g.accept("b", 1)
    g.check("a", 41, NOW_MS, now_ms=NOW_MS)  # touches "a": "b" is now least recent
    g.accept("c", 1)  # evicts "b"
    assert len(g) == 2
    with pytest.raises(StaleMessage):
        g.check("b", 1, NOW_MS, now_ms=NOW_MS)
    g.accept("c", 2)
    g.accept("a", 51)  # evicts nothing: "a" is live
    g.accept("d", 9)  # evicts "c"
    # "b" and "c" were evicted: numbers at or below their marks stay refused
    for sender, seq in (("b", 0), ("b", 1), ("c", 2)):
        with pytest.raises(StaleMessage):
            g.accept(sender, seq)
    g.accept("b", 2)  # above its mark: fine, and "b" is live again
    assert g.high_water_marks() == {"a": 51, "b": 2, "c": 2, "d": 9}


def test_guard_state_survives_a_restart() -> None:
    g = ReplayGuard()
    g.accept("a", 10)
    g.accept("b", 3)
    restarted = ReplayGuard(restore=g.high_water_marks())
    for sender, seq in (("a", 10), ("a", 9), ("b", 3)):
        with pytest.raises(StaleMessage):
            restarted.check(sender, seq, NOW_MS, now_ms=NOW_MS)
    restarted.accept("a", 11)


def test_guard_with_envelopes_accepts_only_verified_ones_once() -> None:
    g = ReplayGuard()
    unverified = decode(signed(sequence=42))
    g.check_envelope(unverified, now_ms=NOW_MS)
    envelope = unverified.verify_signature(SIGNER.verify_key)
    g.accept_envelope(envelope, now_ms=NOW_MS)
    with pytest.raises(ReplayedMessage):
        g.accept_envelope(envelope, now_ms=NOW_MS)
    with pytest.raises(ClockSkewError):
        g.accept_envelope(
            decode(signed(sequence=43)).verify_signature(SIGNER.verify_key),
            now_ms=NOW_MS + 10 * 60_000,
        )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.integers(min_value=0, max_value=300)),
        max_size=200,
    ),
    st.integers(min_value=1, max_value=4),
)
def test_guard_never_accepts_a_sender_sequence_pair_twice(
    steps: list[tuple[str, int]], cap: int
) -> None:
    g = ReplayGuard(max_senders=cap, window_blocks=2)
    accepted: set[tuple[str, int]] = set()
    for sender, seq in steps:
        try:
            g.accept(sender, seq)
        except ReplayError:
            continue
        assert (sender, seq) not in accepted
        accepted.add((sender, seq))
    assert len(g) <= cap


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.integers(min_value=0, max_value=300)),
        max_size=250,
    ),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=0, max_value=2**32),
)
# a sender whose mark was dropped comes back with an older sequence but a newer
# timestamp; its earlier message must still be refused (found by this test)
@example([("c", 1), ("a", 0), ("b", 0), ("c", 0), ("c", 1)], 1, 1, 1290)
def test_bounded_guard_never_accepts_a_message_twice(
    steps: list[tuple[str, int]], cap: int, marks: int, salt: int
) -> None:
    """With both tables tiny (so marks are dropped all the time), a message — a sender,
    a sequence and the timestamp it was signed with — is still accepted at most once."""
    g = ReplayGuard(max_senders=cap, max_evicted=marks, window_blocks=2)
    accepted: set[tuple[str, int]] = set()
    for sender, seq in steps:
        ts = (ord(sender) * 7919 + seq * 104_729 + salt) % 10_000  # fixed per message
        try:
            g.accept(sender, seq, ts)
        except ReplayError:
            continue
        assert (sender, seq) not in accepted
        accepted.add((sender, seq))
    stats = g.stats()
    assert stats["senders"] <= cap
    assert stats["evicted_marks"] <= marks


def test_evicted_marks_are_bounded_and_dropping_one_reopens_nothing() -> None:
    """Issue #9 item 1: the high-water-mark table is bounded; the timestamp floor closes
    what a dropped mark protected."""
    guard = ReplayGuard(max_senders=2, max_evicted=3)
    t = 1_000_000
    for i in range(100):  # 100 distinct senders, each one message at time t + i
        guard.accept(f"s{i}", 7, t + i)
    stats = guard.stats()
    assert stats["senders"] == 2
    assert stats["evicted_marks"] == 3
    assert stats["dropped_marks"] == 95
    assert len(guard.high_water_marks()) == 5
    # s0's mark was dropped: its old message (timestamp t) is refused by the floor
    with pytest.raises(StaleMessage):
        guard.check("s0", 7, t, now_ms=t)
    with pytest.raises(StaleMessage):
        guard.accept("s0", 7, t)
    # a sender still marked is refused at or below its mark, accepted above it
    with pytest.raises(StaleMessage):
        guard.accept("s96", 7, t + 200)
    guard.accept("s96", 8, t + 200)
    # a new sender with a fresh timestamp is served
    guard.accept("new", 1, t + 500)


def test_restored_marks_are_bounded_too() -> None:
    restore = {f"s{i}": 10 for i in range(50)}
    guard = ReplayGuard(max_senders=4, max_evicted=10, restore=restore, restored_at_ms=5_000)
    assert guard.stats()["evicted_marks"] == 10
    # a dropped restored sender's old messages were sent before the restart (+ skew)
    with pytest.raises(StaleMessage):
        guard.accept("s0", 11, 5_000)
    guard.accept("s0", 11, 5_000 + ReplayGuard.DEFAULT_MAX_SKEW_MS + 1)
