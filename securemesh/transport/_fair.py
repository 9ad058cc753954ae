"""A per-peer, round-robin backlog of received messages (the rest of batches).

Theory of operation
-------------------
A batch (``[b"", batch]``, protocol.md §2.1) carries up to 1,024 messages of
one peer in one ZeroMQ message. Served first-in first-out, one batch would make
every other peer wait behind all of it (issue 9, "batch flood": another
device's p99 went from ~18 ms to ~250 ms). So the receiver keeps what is left
of batches here, one queue per peer, and

* pops round-robin across peers (one message of each peer in turn);
* keeps each peer's order: a message that arrives from a peer that still has
  messages here queues behind them;
* is bounded without starving anyone: while it holds fewer than
  :data:`MAX_HELD_MESSAGES` messages and ``max_bytes`` bytes the receiver
  alternates between it and its socket; beyond that (:meth:`FairBacklog.full`)
  it reads its socket only once every :data:`FULL_TURN` messages, so a peer
  that sends batches of at most 64 messages (what SecureMesh connections send)
  never grows its share, and ZeroMQ's back-pressure reaches it;
* drops what a peer sends beyond its share: a message read from the socket is
  refused (:meth:`FairBacklog.room`, counted by the receiver) while its peer
  holds :data:`MAX_HELD_PER_PEER` messages or ``max_bytes`` bytes here, or
  while all peers together hold 4 times the soft bounds. Only a peer that packs
  more than :data:`FULL_TURN` messages per batch (hand-made batches: an
  attacker) can get there.

The receiver alternates between this backlog and its socket (ZeroMQ fair-queues
the socket across peers), so a peer whose message is waiting in the socket is
served after at most one backlog message.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

__all__ = ["FULL_TURN", "MAX_HELD_MESSAGES", "MAX_HELD_PER_PEER", "FairBacklog"]

#: Beyond this many held messages the socket gets one turn per FULL_TURN messages.
MAX_HELD_MESSAGES = 1024
FULL_TURN = 64
#: A peer holding this many messages here gets what it sends next dropped.
MAX_HELD_PER_PEER = 2 * MAX_HELD_MESSAGES

Item = tuple[bytes, list[bytes]]


def _size(frames: list[bytes]) -> int:
    return sum(map(len, frames))


class FairBacklog:
    """Messages waiting to be returned, one FIFO per peer, popped round-robin."""

    __slots__ = ("_bytes", "_count", "_max_bytes", "_peer_bytes", "_queues")

    def __init__(self, max_bytes: int) -> None:
        self._queues: OrderedDict[bytes, deque[list[bytes]]] = OrderedDict()
        self._peer_bytes: dict[bytes, int] = {}
        self._count = 0
        self._bytes = 0
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return self._count

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def full(self) -> bool:
        """True while the receiver must not read more from its socket."""
        return self._count >= MAX_HELD_MESSAGES or self._bytes >= self._max_bytes

    def has(self, peer: bytes) -> bool:
        return peer in self._queues

    def room(self, peer: bytes, messages: int, size: int) -> bool:
        """May ``messages`` more of ``peer`` (``size`` bytes) be held? False: drop them."""
        if (
            self._count + messages > 4 * MAX_HELD_MESSAGES
            or self._bytes + size > 4 * self._max_bytes
        ):
            return False
        queue = self._queues.get(peer)
        if queue is None:  # one batch (at most max_frame_size bytes) always fits
            return True
        return (
            len(queue) + messages <= MAX_HELD_PER_PEER
            and self._peer_bytes[peer] + size <= 2 * self._max_bytes
        )

    def put(self, peer: bytes, messages: Iterable[list[bytes]]) -> None:
        """Queue ``messages`` of ``peer`` behind what it already has here."""
        queue = self._queues.get(peer)
        if queue is None:
            queue = self._queues[peer] = deque()
        before = len(queue)
        added = 0
        for frames in messages:
            queue.append(frames)
            added += _size(frames)
        self._bytes += added
        self._count += len(queue) - before
        if queue:
            self._peer_bytes[peer] = self._peer_bytes.get(peer, 0) + added
        else:
            del self._queues[peer]

    def pop(self) -> Item | None:
        """The next message of the peer whose turn it is (then it goes to the back)."""
        queues = self._queues
        if not queues:
            return None
        peer, queue = next(iter(queues.items()))
        frames = self._take(peer, queue)
        if queue:
            queues.move_to_end(peer)
        return peer, frames

    def _take(self, peer: bytes, queue: deque[list[bytes]]) -> list[bytes]:
        frames = queue.popleft()
        size = _size(frames)
        self._count -= 1
        self._bytes -= size
        if queue:
            self._peer_bytes[peer] -= size
        else:
            del self._queues[peer]
            del self._peer_bytes[peer]
        return frames

    def pop_peer(self, peer: bytes) -> list[bytes] | None:
        """The oldest message of ``peer`` (its turn stays where it was)."""
        queue = self._queues.get(peer)
        if queue is None:
            return None
        return self._take(peer, queue)

    def drop(self, peers: Iterable[bytes]) -> int:
        """Forget everything held for ``peers``; return how many messages went."""
        dropped = 0
        for peer in peers:
            queue = self._queues.pop(peer, None)
            if queue is not None:
                dropped += len(queue)
                self._count -= len(queue)
                self._bytes -= self._peer_bytes.pop(peer)
        return dropped

    def clear(self) -> None:
        self._queues.clear()
        self._peer_bytes.clear()
        self._count = 0
        self._bytes = 0
