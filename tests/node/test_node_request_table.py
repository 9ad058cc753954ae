"""The request table in memory (sans-I/O): a reply matches at most once, entries expire, bounded."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.errors import LocalError
from securemesh.node._requests import RequestTable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(clock: Clock, **kw: int) -> RequestTable[str]:
    return RequestTable(clock=clock, forward_ttl=10.0, **kw)


def test_a_reply_from_the_addressed_node_takes_the_waiter_once() -> None:
    t = table(Clock())
    t.open(b"c" * 16, "edge-1", "waiter")
    assert not t.expects(b"c" * 16, "edge-2")
    assert t.take(b"c" * 16, "edge-2") is None  # another node's reply: not ours
    assert t.expects(b"c" * 16, "edge-1")
    assert t.take(b"c" * 16, "edge-1") == "waiter"
    assert t.take(b"c" * 16, "edge-1") is None
    assert t.pending_count == 0


def test_open_refuses_a_duplicate_id_and_past_the_bound() -> None:
    t = table(Clock(), max_pending=2)
    t.open(b"a", None, "1")
    with pytest.raises(LocalError):
        t.open(b"a", None, "again")
    t.open(b"b", None, "2")
    with pytest.raises(LocalError):
        t.open(b"c", None, "3")
    t.close(b"a")
    t.open(b"c", None, "3")
    assert sorted(t.drain()) == ["2", "3"]
    assert t.pending_count == 0


def test_forwarded_reply_goes_through_once_and_not_after_expiry() -> None:
    clock = Clock()
    t = table(clock)
    t.remember_forwarded(b"f", "dev-1", "cloud-1")
    # the reply comes from the request's recipient back to its origin
    assert t.reply_ok(b"f", "cloud-1", "dev-1", local=False)
    assert not t.reply_ok(b"f", "dev-1", "cloud-1", local=False)
    assert not t.reply_ok(b"f", "cloud-1", "dev-1", local=True)
    t.forwarded_reply(b"f")
    assert not t.forwarded_reply_ok(b"f", "cloud-1", "dev-1")
    t.remember_forwarded(b"g", "dev-1", "cloud-1")
    clock.now += 10.0
    assert not t.forwarded_reply_ok(b"g", "cloud-1", "dev-1")  # expired, even before a purge
    assert t.purge() == 1
    assert t.forwarded_count == 0


ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.integers(0, 7), st.sampled_from(["a", "b", None])),
        st.tuples(st.just("reply"), st.integers(0, 7), st.sampled_from(["a", "b"])),
        st.tuples(st.just("close"), st.integers(0, 7), st.none()),
        st.tuples(st.just("fwd"), st.integers(0, 7), st.sampled_from(["a", "b"])),
        st.tuples(st.just("tick"), st.integers(0, 7), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_invariants_under_any_sequence(steps: list[tuple[str, int, str | None]]) -> None:
    """Each opened request's waiter is handed out at most once; nothing expired is let
    through; both kinds stay within their bounds."""
    clock = Clock()
    t: RequestTable[int] = RequestTable(
        clock=clock, forward_ttl=3.0, max_pending=4, max_forwarded=3
    )
    handed: list[int] = []
    opened = 0
    made_at: dict[bytes, float] = {}
    for op, n, who in steps:
        cid = bytes([n])
        if op == "open":
            with contextlib.suppress(LocalError):
                t.open(cid, who, opened)
            opened += 1
        elif op == "reply":
            assert who is not None
            got = t.take(cid, who)
            if got is not None:
                handed.append(got)
        elif op == "close":
            t.close(cid)
        elif op == "fwd":
            assert who is not None
            t.remember_forwarded(cid, who, "x")
            made_at[cid] = clock.now
        else:
            clock.now += n
            t.purge()
        for fcid, at in made_at.items():
            if clock.now - at >= 3.0:
                assert not t.forwarded_reply_ok(fcid, "x", "a")
                assert not t.forwarded_reply_ok(fcid, "x", "b")
        assert t.pending_count <= 4
        assert t.forwarded_count <= 3
    assert len(handed) == len(set(handed))
