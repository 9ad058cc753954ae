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
from typing import Any

__all__ = ["FULL_TURN", "MAX_HELD_MESSAGES", "MAX_HELD_PER_PEER", "FairBacklog"]

#: Beyond this many held messages the socket gets one turn per FULL_TURN messages.
MAX_HELD_MESSAGES = 1024
FULL_TURN = 64
#: A peer holding this many messages here gets what it sends next dropped.
MAX_HELD_PER_PEER = 2 * MAX_HELD_MESSAGES

Item = tuple[bytes, list[bytes]]


class _Queue:
    """One peer's held messages: chunks ``[messages, next index, bytes]`` in order.

    Bytes are accounted per chunk (a batch's payload size) and released when
    its last message is taken: no per-message size arithmetic on the hot path.
    """

    __slots__ = ("chunks", "count", "size")

    def __init__(self) -> None:
        self.chunks: deque[list[Any]] = deque()
        self.count = 0
        self.size = 0


class FairBacklog:
    """Messages waiting to be returned, one FIFO per peer, popped round-robin."""

    __slots__ = ("_bytes", "_count", "_max_bytes", "_queues")

    def __init__(self, max_bytes: int) -> None:
        self._queues: OrderedDict[bytes, _Queue] = OrderedDict()
        self._count = 0
        self._bytes = 0
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return self._count

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def full(self) -> bool:
        """True while the receiver should read its socket only now and then."""
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
            queue.count + messages <= MAX_HELD_PER_PEER and queue.size + size <= 2 * self._max_bytes
        )

    def put(self, peer: bytes, messages: list[list[bytes]], size: int) -> None:
        """Queue ``messages`` of ``peer`` (``size`` bytes) behind what it has here."""
        if not messages:
            return
        queue = self._queues.get(peer)
        if queue is None:
            queue = self._queues[peer] = _Queue()
        queue.chunks.append([messages, 0, size])
        queue.count += len(messages)
        queue.size += size
        self._count += len(messages)
        self._bytes += size

    def pop(self) -> Item | None:
        """The next message of the peer whose turn it is (then it goes to the back)."""
        queues = self._queues
        if not queues:
            return None
        peer, queue = next(iter(queues.items()))
        frames = self._take(peer, queue)
        if queue.count:
            queues.move_to_end(peer)
        return peer, frames

    def _take(self, peer: bytes, queue: _Queue) -> list[bytes]:
        chunk = queue.chunks[0]
        messages, i = chunk[0], chunk[1]
        frames: list[bytes] = messages[i]
        if i + 1 == len(messages):
            queue.chunks.popleft()
            queue.size -= chunk[2]
            self._bytes -= chunk[2]
        else:
            chunk[1] = i + 1
        queue.count -= 1
        self._count -= 1
        if not queue.count:
            del self._queues[peer]
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
                dropped += queue.count
                self._count -= queue.count
                self._bytes -= queue.size
        return dropped

    def clear(self) -> None:
        self._queues.clear()
        self._count = 0
        self._bytes = 0
