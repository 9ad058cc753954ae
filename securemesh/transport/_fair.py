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
served after at most a few backlog messages (16 after the socket was last found
empty, :data:`FULL_TURN` while full: ``_Receiver._try_recv`` in ``_zmq``).

Turns are a ring (a deque) of per-peer queues; each queue serves its current
chunk by index. With one peer holding messages (one peer's batch: the usual
case) a pop is an index step and nothing is reordered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

__all__ = ["FULL_TURN", "MAX_HELD_MESSAGES", "MAX_HELD_PER_PEER", "FairBacklog"]

#: Beyond this many held messages the socket gets one turn per FULL_TURN messages.
MAX_HELD_MESSAGES = 1024
FULL_TURN = 64
#: A peer holding this many messages here gets what it sends next dropped.
MAX_HELD_PER_PEER = 2 * MAX_HELD_MESSAGES

Item = tuple[bytes, list[bytes]]


class _Queue:
    """One peer's held messages: the chunk being served, then whole chunks in order.

    A chunk is one batch's rest (its messages and payload size). Bytes are
    accounted per chunk and released when its last message is taken: no
    per-message size arithmetic on the hot path.
    """

    __slots__ = ("count", "cur", "cur_size", "i", "peer", "rest", "size")

    def __init__(self, peer: bytes, messages: list[list[bytes]], size: int) -> None:
        self.peer = peer
        self.cur = messages  # the chunk being served ...
        self.i = 0  # ... from this index
        self.cur_size = size
        self.rest: deque[tuple[list[list[bytes]], int]] = deque()  # whole chunks behind it
        self.count = len(messages)
        self.size = size


class FairBacklog:
    """Messages waiting to be returned, one FIFO per peer, popped round-robin.

    ``count`` is the number of messages held (read it, never write it). The
    turn order is a ring of the peers that hold messages; with one peer in it
    (the usual case: one peer's batch) a pop is an index step, no reordering.
    """

    __slots__ = ("_bytes", "_max_bytes", "_queues", "_ring", "count")

    def __init__(self, max_bytes: int) -> None:
        self._queues: dict[bytes, _Queue] = {}
        self._ring: deque[_Queue] = deque()  # turn order: the head's peer is next
        self.count = 0
        self._bytes = 0
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return self.count

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def full(self) -> bool:
        """True while the receiver should read its socket only now and then."""
        return self.count >= MAX_HELD_MESSAGES or self._bytes >= self._max_bytes

    def has(self, peer: bytes) -> bool:
        return peer in self._queues

    def room(self, peer: bytes, messages: int, size: int) -> bool:
        """May ``messages`` more of ``peer`` (``size`` bytes) be held? False: drop them."""
        if (
            self.count + messages > 4 * MAX_HELD_MESSAGES
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
            queue = self._queues[peer] = _Queue(peer, messages, size)
            self._ring.append(queue)  # its first turn comes after everyone held now
        else:
            queue.rest.append((messages, size))
            queue.count += len(messages)
            queue.size += size
        self.count += len(messages)
        self._bytes += size

    def pop(self) -> Item | None:
        """The next message of the peer whose turn it is (then it goes to the back)."""
        ring = self._ring
        if not ring:
            return None
        queue = ring[0]
        i = queue.i
        frames = queue.cur[i]
        queue.i = i + 1
        queue.count -= 1
        self.count -= 1
        if i + 1 == len(queue.cur):
            self._next_chunk(queue)
            if not queue.count:
                ring.popleft()
                return queue.peer, frames
        if len(ring) > 1:
            ring.rotate(-1)
        return queue.peer, frames

    def pop_run(self, limit: int) -> tuple[bytes, list[list[bytes]]] | None:
        """Up to ``limit`` (>= 1) next messages of the peer whose turn it is, in order.

        While that peer is the only one holding messages, a run from its current
        chunk: exactly what ``limit`` calls of :meth:`pop` would return, in one
        slice. With other peers held, one message (their turns stay as
        :meth:`pop` keeps them).
        """
        ring = self._ring
        if not ring:
            return None
        queue = ring[0]
        if len(ring) > 1:
            frames = self.pop()
            assert frames is not None
            return frames[0], [frames[1]]
        i = queue.i
        cur = queue.cur
        end = len(cur)
        j = min(i + limit, end)
        run = cur[i:j]
        n = j - i
        queue.i = j
        queue.count -= n
        self.count -= n
        if j == end:
            self._next_chunk(queue)
            if not queue.count:
                ring.popleft()
        return queue.peer, run

    def _next_chunk(self, queue: _Queue) -> None:
        """``queue``'s current chunk is served: release its bytes, start the next."""
        self._bytes -= queue.cur_size
        queue.size -= queue.cur_size
        if queue.rest:
            queue.cur, queue.cur_size = queue.rest.popleft()
            queue.i = 0
        else:
            del self._queues[queue.peer]  # the caller takes it out of the ring

    def pop_peer(self, peer: bytes) -> list[bytes] | None:
        """The oldest message of ``peer`` (its turn stays where it was)."""
        queue = self._queues.get(peer)
        if queue is None:
            return None
        i = queue.i
        frames = queue.cur[i]
        queue.i = i + 1
        queue.count -= 1
        self.count -= 1
        if i + 1 == len(queue.cur):
            self._next_chunk(queue)
            if not queue.count:
                self._ring.remove(queue)
        return frames

    def drop(self, peers: Iterable[bytes]) -> int:
        """Forget everything held for ``peers``; return how many messages went."""
        dropped = 0
        for peer in peers:
            queue = self._queues.pop(peer, None)
            if queue is not None:
                self._ring.remove(queue)
                dropped += queue.count
                self.count -= queue.count
                self._bytes -= queue.size
        return dropped

    def clear(self) -> None:
        self._queues.clear()
        self._ring.clear()
        self.count = 0
        self._bytes = 0
