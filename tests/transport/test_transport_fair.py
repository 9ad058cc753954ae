"""The per-peer round-robin backlog behind batch fairness (issue 9 #8b)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from securemesh.transport._fair import MAX_HELD_MESSAGES, FairBacklog

_peer = st.sampled_from([b"a" * 32, b"b" * 32, b"c" * 32])
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _peer, st.integers(min_value=0, max_value=5)),
        st.tuples(st.just("pop"), _peer, st.just(0)),
        st.tuples(st.just("drop"), _peer, st.just(0)),
    ),
    max_size=60,
)


@given(_ops)
def test_order_per_peer_counts_and_round_robin(ops: list[tuple[str, bytes, int]]) -> None:
    backlog = FairBacklog(max_bytes=1 << 30)
    model: dict[bytes, list[int]] = {}
    counter = 0
    for op, peer, n in ops:
        if op == "put":
            items = list(range(counter, counter + n))
            counter += n
            backlog.put(peer, [[i.to_bytes(4, "big")] for i in items], 4 * n)
            if items:
                model.setdefault(peer, []).extend(items)
        elif op == "pop":
            got = backlog.pop()
            if not model:
                assert got is None
                continue
            assert got is not None
            who, frames = got
            assert int.from_bytes(frames[0], "big") == model[who].pop(0)  # per-peer FIFO
            if not model[who]:
                del model[who]
        else:
            gone = len(model.pop(peer, []))
            assert backlog.drop([peer]) == gone
        assert len(backlog) == sum(map(len, model.values()))
        assert (backlog.held_bytes == 0) == (len(backlog) == 0)  # released per chunk
        assert backlog.held_bytes >= 0
        assert all(backlog.has(p) == (p in model) for p in (b"a" * 32, b"b" * 32, b"c" * 32))


def test_peers_take_turns_and_the_backlog_is_bounded() -> None:
    backlog = FairBacklog(max_bytes=100)
    backlog.put(b"a", [[b"a%d" % i] for i in range(3)], 6)
    backlog.put(b"b", [[b"b0"]], 2)
    got = [backlog.pop() for _ in range(4)]
    assert [g[1][0] for g in got if g] == [b"a0", b"b0", b"a1", b"a2"]
    assert not backlog.full()
    backlog.put(b"a", [[bytes(60)], [bytes(60)]], 120)
    assert backlog.full()  # by bytes
    backlog.clear()
    backlog.put(b"a", [[b"x"]] * MAX_HELD_MESSAGES, MAX_HELD_MESSAGES)
    assert backlog.full()  # by count


def test_a_peer_beyond_its_share_is_refused_and_totals_are_bounded() -> None:
    backlog = FairBacklog(max_bytes=1000)
    assert backlog.room(b"a", 1024, 900)  # nothing held: one batch always fits
    backlog.put(b"a", [[b"x"]] * 1024, 900)
    assert backlog.room(b"a", 1024, 10)
    backlog.put(b"a", [[b"x"]] * 1024, 10)
    assert not backlog.room(b"a", 1, 1)  # MAX_HELD_PER_PEER
    assert backlog.room(b"b", 1024, 10)  # others still have room
    assert not backlog.room(b"b", 1, 5000)  # but never over 4x the bytes in total


_run_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _peer, st.integers(min_value=0, max_value=7)),
        st.tuples(st.just("run"), _peer, st.integers(min_value=1, max_value=9)),
        st.tuples(st.just("drop"), _peer, st.just(0)),
    ),
    max_size=60,
)


@given(_run_ops)
def test_pop_run_hands_out_what_successive_pops_would(ops: list[tuple[str, bytes, int]]) -> None:
    """pop_run(n) takes 1..n messages, exactly what as many pop() calls would return
    (same messages, order, peers, counts and bytes), and a run only while its peer
    is the only one held."""
    runs, pops = FairBacklog(max_bytes=1 << 30), FairBacklog(max_bytes=1 << 30)
    counter = 0
    for op, peer, n in ops:
        if op == "put":
            for backlog in (runs, pops):
                backlog.put(peer, [[b"%d" % i] for i in range(counter, counter + n)], n)
            counter += n
        elif op == "drop":
            assert runs.drop([peer]) == pops.drop([peer])
        else:
            alone = len({q.peer for q in runs._ring}) == 1
            got = runs.pop_run(n)
            if got is None:
                assert pops.pop() is None
                continue
            who, run = got
            assert 1 <= len(run) <= (n if alone else 1)
            for frames in run:
                assert pops.pop() == (who, frames)
        assert (len(runs), runs.held_bytes) == (len(pops), pops.held_bytes)
        assert all(runs.has(p) == pops.has(p) for p in (b"a" * 32, b"b" * 32, b"c" * 32))


def test_pop_run_takes_one_message_while_others_wait_and_a_run_when_alone() -> None:
    backlog = FairBacklog(max_bytes=1 << 20)
    backlog.put(b"a", [[b"a%d" % i] for i in range(5)], 10)
    backlog.put(b"b", [[b"b0"]], 2)
    first = backlog.pop_run(4)
    assert first == (b"a", [[b"a0"]])  # b is waiting: one message, then b's turn
    assert backlog.pop_run(4) == (b"b", [[b"b0"]])
    assert backlog.pop_run(3) == (b"a", [[b"a1"], [b"a2"], [b"a3"]])  # alone: a run
    backlog.put(b"a", [[b"a5"], [b"a6"]], 4)  # a chunk behind the current one
    assert backlog.pop_run(9) == (b"a", [[b"a4"]])  # a run never crosses a chunk
    assert backlog.pop_run(9) == (b"a", [[b"a5"], [b"a6"]])
    assert backlog.pop_run(1) is None
    assert (len(backlog), backlog.held_bytes, backlog.has(b"a")) == (0, 0, False)
