"""The route table in memory (sans-I/O): source learning, evidence freshness, bounds."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.errors import RouteRefused
from securemesh.node._routes import RouteTable


@dataclass(eq=False)
class Link:
    peer: bytes
    node_id: str | None = None
    is_parent: bool = False


def test_direct_message_sets_route_and_neighbour() -> None:
    changed: list[int] = []
    t: RouteTable[Link] = RouteTable(max_nodes=8, on_evidence=lambda: changed.append(1))
    a = Link(b"A")
    t.add_child(a)
    assert t.learn("dev-1", a, 5, relayed=False)
    assert a.node_id == "dev-1"
    assert t.direct["dev-1"] is a
    assert t.get("dev-1") is a
    assert "dev-1" in t
    assert not t.learn("dev-1", a, 6, relayed=False)  # already routed there
    assert t.evidence() == {"dev-1": 5}
    assert changed == [1]


def test_a_relayed_message_moves_a_route_only_on_fresher_evidence() -> None:
    t: RouteTable[Link] = RouteTable(max_nodes=8)
    a, b = Link(b"A", "edge-1"), Link(b"B", "edge-2")
    assert t.learn("dev-1", a, 10, relayed=True)
    assert not t.learn("dev-1", b, 10, relayed=True)  # same evidence, other link: stays
    assert not t.learn("dev-1", b, 9, relayed=True)
    assert t.get("dev-1") is a
    assert t.learn("dev-1", b, 11, relayed=True)
    assert t.get("dev-1") is b


def test_restored_evidence_refuses_an_old_statement() -> None:
    t: RouteTable[Link] = RouteTable(max_nodes=8, restore={"dev-1": 50})
    a = Link(b"A", "edge-1")
    with pytest.raises(RouteRefused):
        t.route_on_statement("dev-1", a, 49, "old")
    t.route_on_statement("dev-1", a, 50, "same")  # no route yet: the same evidence may set it
    assert t.get("dev-1") is a
    assert t.attachment("dev-1") == "same"


def test_dropping_links_peers_and_revoked_nodes() -> None:
    t: RouteTable[Link] = RouteTable(max_nodes=8)
    a, b = Link(b"A"), Link(b"B")
    for link in (a, b):
        t.add_child(link)
    t.learn("edge-1", a, 1, relayed=False)
    t.learn("dev-1", a, 1, relayed=True)
    t.learn("edge-2", b, 1, relayed=False)
    t.withdraw(["dev-1"], b)  # not b's route: unchanged
    assert t.get("dev-1") is a
    t.drop_link(a)
    assert "edge-1" not in t
    assert "dev-1" not in t
    assert "edge-1" not in t.direct
    t.forget(["edge-2"])
    assert t.child(b"B") is None
    assert "edge-2" not in t.direct
    t.add_child(a)
    t.learn("edge-1", a, 2, relayed=False)
    t.drop_peer(b"A")
    assert len(t) == 0
    assert not t.children
    assert not t.direct


steps = st.lists(
    st.tuples(
        st.sampled_from(["learn", "relay", "statement", "drop", "forget"]),
        st.integers(0, 11),  # node
        st.integers(0, 2),  # link
        st.integers(0, 20),  # sequence
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_invariants_under_any_sequence(ops: list[tuple[str, int, int, int]]) -> None:
    """Evidence never goes down, a route never moves on stale evidence, bounds hold,
    and every route points at a live child link."""
    links = [Link(bytes([i])) for i in range(3)]
    t: RouteTable[Link] = RouteTable(max_nodes=5)
    for op, n, li, seq in ops:
        node, link = f"n{n}", links[li]
        before = t.evidence().get(node)
        route_before = t.get(node)
        if op in ("learn", "relay", "statement") and t.child(link.peer) is None:
            t.add_child(link)
        if op == "learn":
            t.learn(node, link, seq, relayed=False)
        elif op == "relay":
            moved = t.learn(node, link, seq, relayed=True)
            if moved and route_before is not None and before is not None:
                assert seq >= before
        elif op == "statement":
            try:
                t.route_on_statement(node, link, seq, f"s{seq}")
            except RouteRefused:
                assert t.get(node) is route_before
        elif op == "drop":
            t.drop_link(link)
        else:
            t.forget([node])
        after = t.evidence().get(node)
        if before is not None and after is not None:
            assert after >= before
        assert len(t.evidence()) <= 5
        assert all(t.children.get(r.peer) is r for r in t.routes.values())


@settings(max_examples=150, deadline=None)
@given(steps, st.integers(0, 11), st.integers(0, 2), st.integers(0, 20), st.booleans())
def test_the_inline_check_of_route_means_learn_changes_nothing(
    ops: list[tuple[str, int, int, int]], n: int, li: int, seq: int, relayed: bool
) -> None:
    """MeshNode._route skips RouteTable.learn when a known child's route (and, for a direct
    message, direct link and node id) is the link already; learn must then change nothing."""
    links = [Link(bytes([i])) for i in range(3)]
    t: RouteTable[Link] = RouteTable(max_nodes=5)
    for op, node_n, link_i, s in ops:
        link = links[link_i]
        if t.child(link.peer) is None:
            t.add_child(link)
        if op in ("learn", "relay"):
            t.learn(f"n{node_n}", link, s, relayed=op == "relay")
        elif op == "drop":
            t.drop_link(link)
    sender, link = f"n{n}", links[li]
    skipped = (
        t.children.get(link.peer) is link
        and t.routes.get(sender) is link
        and (relayed or (link.node_id == sender and t.direct.get(sender) is link))
    )
    if skipped:
        before = (dict(t.routes), dict(t.direct), t.evidence(), link.node_id)
        assert not t.learn(sender, link, seq, relayed=relayed)
        assert (dict(t.routes), dict(t.direct), t.evidence(), link.node_id) == before
