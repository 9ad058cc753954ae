"""The route table: tree routing by source learning, moved only on fresher evidence.

Sans-I/O: no sockets, no event loop, no clock; a *link* is any object with
``peer`` (the neighbour's CURVE key), ``node_id`` and ``is_parent`` (the node
uses its ``_Link``; tests use plain objects). The table owns:

* ``children`` — child links by CURVE key, ``direct`` — links by the node id
  of the neighbour itself (children and the parent);
* ``routes`` — node id -> child link it is reached through (the default
  route, the parent, is the node's business);
* route **evidence** — the highest sequence of a node's own signed statement
  (its attachment statement, or a relayed envelope of it) that set its route.
  A route is set or moved only on evidence fresher than what is known
  (:meth:`RouteTable.fresher`), so a rogue edge cannot attract the traffic of
  a device attached elsewhere; the evidence survives a restart
  (``restore``/:meth:`RouteTable.evidence`);
* the newest **attachment statement** of each routed node, passed upward in
  route announcements.

Bounded: evidence and statements are kept for at most ``max_nodes`` nodes
(past that the oldest entry of a node that has no route here goes first).
Routes and children are bounded by the links and certificates that produce
them (one per authenticated connection, one per certified node).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from securemesh.errors import RouteRefused

__all__ = ["RouteLink", "RouteTable"]


class RouteLink(Protocol):
    """What the table uses of a link (it sets ``node_id`` of a direct neighbour)."""

    peer: bytes
    node_id: str | None
    is_parent: bool


L = TypeVar("L", bound=RouteLink)


class RouteTable(Generic[L]):
    """Routes, direct neighbours, children and route evidence (see the module docstring)."""

    __slots__ = (
        "_attachments",
        "_evidence",
        "children",
        "direct",
        "max_nodes",
        "on_evidence",
        "routes",
    )

    def __init__(
        self,
        *,
        max_nodes: int,
        restore: Mapping[str, int] | None = None,
        on_evidence: Callable[[], None] | None = None,
    ) -> None:
        self.max_nodes = max_nodes
        self.routes: dict[str, L] = {}
        self.children: dict[bytes, L] = {}
        self.direct: dict[str, L] = {}
        self._evidence: dict[str, int] = dict(itertools.islice((restore or {}).items(), max_nodes))
        self._attachments: dict[str, tuple[int, str]] = {}
        #: called when the evidence moved on (the daemon then saves :meth:`evidence`)
        self.on_evidence = on_evidence

    # ----------------------------------------------------------------- lookup

    def get(self, node_id: str) -> L | None:
        return self.routes.get(node_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.routes

    def __len__(self) -> int:
        return len(self.routes)

    def evidence(self) -> dict[str, int]:
        """The sequence of the freshest route evidence per node (to restore after a restart)."""
        return dict(self._evidence)

    def attachment(self, node_id: str) -> str | None:
        """The newest attachment statement of ``node_id`` we hold (base64), if any."""
        kept = self._attachments.get(node_id)
        return None if kept is None else kept[1]

    # -------------------------------------------------------------- learning

    def fresher(self, node_id: str, sequence: int, link: L) -> bool:
        """Is ``sequence`` newer evidence for routing ``node_id`` via ``link``?

        The same evidence again is fresh for the link that holds the route, or
        for any link when there is no route (e.g. after a restart restored the
        evidence): it names its parent, so only the link below that parent can
        use it.
        """
        known = self._evidence.get(node_id)
        if known is None or sequence > known:
            return True
        current = self.routes.get(node_id)
        return sequence == known and (current is link or current is None)

    def note_evidence(self, node_id: str, sequence: int) -> None:
        """Keep the freshest route evidence of ``node_id``."""
        known = self._evidence.get(node_id)
        if known is None or sequence > known:
            if known is None:
                self._make_room(self._evidence)
            self._evidence[node_id] = sequence
            if self.on_evidence is not None:
                self.on_evidence()

    def learn(self, sender: str, link: L, sequence: int, *, relayed: bool) -> bool:
        """A verified message of ``sender`` came on child ``link``: source learning.

        A direct message makes ``link`` the sender's own link. The route moves
        to ``link`` unless the message was relayed and is not fresher than the
        evidence of the current route. True when the route was set or moved.
        """
        if not relayed:
            link.node_id = sender
            self.direct[sender] = link
        if self.routes.get(sender) is link:
            return False
        if relayed and not self.fresher(sender, sequence, link):
            return False  # older than the evidence of its current route: keep it
        self.routes[sender] = link
        self.note_evidence(sender, sequence)
        return True

    def route_on_statement(self, node_id: str, link: L, sequence: int, text: str) -> None:
        """Route ``node_id`` via ``link`` on its verified attachment statement ``text``.

        Raises :class:`~securemesh.errors.RouteRefused` when fresher evidence
        of another route is known.
        """
        if self.routes.get(node_id) is not link and not self.fresher(node_id, sequence, link):
            raise RouteRefused(f"fresher route evidence of {node_id!r} is known")
        self.note_evidence(node_id, sequence)
        self.keep_attachment(node_id, sequence, text)
        self.routes[node_id] = link

    def keep_attachment(self, node_id: str, sequence: int, text: str) -> None:
        """Keep ``node_id``'s attachment statement if it is the newest we have."""
        kept = self._attachments.get(node_id)
        if kept is None or sequence >= kept[0]:
            if kept is None:
                self._make_room(self._attachments)
            self._attachments[node_id] = (sequence, text)

    def _make_room(self, table: dict[str, Any]) -> None:
        if len(table) < self.max_nodes:
            return
        victim = next((n for n in table if n not in self.routes), None)
        if victim is None:
            victim = next(iter(table))
        del table[victim]

    # -------------------------------------------------------------- children

    def child(self, peer: bytes) -> L | None:
        return self.children.get(peer)

    def add_child(self, link: L) -> None:
        self.children[link.peer] = link

    def set_direct(self, node_id: str, link: L) -> None:
        self.direct[node_id] = link

    # ---------------------------------------------------------------- losing

    def withdraw(self, node_ids: Iterable[str], link: L) -> None:
        """``link`` no longer reaches ``node_ids`` (a route announcement's ``withdrawn``)."""
        for node_id in node_ids:
            if self.routes.get(node_id) is link:
                del self.routes[node_id]

    def drop_link(self, link: L) -> None:
        """A child link went away: it, its direct node and every route through it."""
        if self.children.get(link.peer) is link:
            del self.children[link.peer]
        node_id = link.node_id
        if node_id is not None and self.direct.get(node_id) is link:
            del self.direct[node_id]
        self._drop_routes_via(link)

    def drop_peer(self, peer: bytes) -> None:
        """The child with CURVE key ``peer`` was cut off (revoked): forget all of it."""
        link = self.children.pop(peer, None)
        if link is None:
            return
        if link.node_id is not None:
            self.direct.pop(link.node_id, None)
        self._drop_routes_via(link)

    def forget(self, node_ids: Iterable[str]) -> None:
        """Revoked nodes: their routes, and their own links (with every route through
        them) if they are children."""
        for node_id in node_ids:
            self.routes.pop(node_id, None)
            link = self.direct.pop(node_id, None)
            if link is not None and not link.is_parent and self.children.get(link.peer) is link:
                del self.children[link.peer]
                self._drop_routes_via(link)

    def _drop_routes_via(self, link: L) -> None:
        for node_id, routed in list(self.routes.items()):
            if routed is link:
                del self.routes[node_id]
