"""The request table: which replies a node expects, and which it lets through.

Sans-I/O: no sockets, no event loop, no clock of its own (``clock`` is
injected). The node keeps two kinds of entry, both keyed by the 16-byte
correlation id of a REQUEST envelope:

* **pending** — a request this node sent (:meth:`RequestTable.open`). The
  waiter (an asyncio future in the node, anything in a test) is handed back
  by :meth:`RequestTable.take` to exactly one REPLY that names the id and
  comes from the addressed node; the entry is gone after that, so a reply is
  matched at most once. The caller closes its entry when it stops waiting
  (:meth:`RequestTable.close`: timeout, cancellation).
* **forwarded** — a request this node relayed for someone else
  (:meth:`RequestTable.remember_forwarded`). The matching REPLY (from the
  request's recipient back to its origin) is let through once
  (:meth:`RequestTable.forwarded_reply_ok`, :meth:`RequestTable.forwarded_reply`);
  the entry expires ``forward_ttl`` seconds after it was made.

Both kinds are bounded: at most ``max_pending`` requests of this node wait at
once (another one is refused with :class:`~securemesh.errors.LocalError`), and
at most ``max_forwarded`` forwarded entries are kept (the oldest go first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from securemesh.errors import LocalError

__all__ = ["Pending", "RequestTable"]

W = TypeVar("W")


class Pending(Generic[W]):
    """A request of this node that waits for its reply."""

    __slots__ = ("dest", "sent_at", "waiter")

    def __init__(self, dest: str | None, waiter: W, sent_at: float) -> None:
        #: the node the reply must come from (None: any direct peer, e.g. the parent's hello)
        self.dest = dest
        self.waiter = waiter
        self.sent_at = sent_at


class RequestTable(Generic[W]):
    """Pending requests of this node and requests it forwarded (see the module docstring)."""

    __slots__ = ("_clock", "_forwarded", "_pending", "forward_ttl", "max_forwarded", "max_pending")

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        forward_ttl: float,
        max_pending: int = 100_000,
        max_forwarded: int = 100_000,
    ) -> None:
        self._clock = clock
        self.forward_ttl = forward_ttl
        self.max_pending = max_pending
        self.max_forwarded = max_forwarded
        self._pending: dict[bytes, Pending[W]] = {}
        #: correlation id -> (origin, recipient, expires at); oldest first
        self._forwarded: OrderedDict[bytes, tuple[str, str, float]] = OrderedDict()

    # ------------------------------------------------------------- our requests

    def open(self, cid: bytes, dest: str | None, waiter: W) -> None:
        """Wait for the reply to our request ``cid`` to ``dest`` (None: whoever answers)."""
        if cid in self._pending:
            raise LocalError("correlation id already in use")
        if len(self._pending) >= self.max_pending:
            raise LocalError(f"too many requests waiting for a reply ({self.max_pending})")
        self._pending[cid] = Pending(dest, waiter, self._clock())

    def close(self, cid: bytes) -> None:
        """The caller stopped waiting (answered, timed out or cancelled)."""
        self._pending.pop(cid, None)

    def expects(self, cid: bytes, sender: str) -> bool:
        """Would a reply ``cid`` from ``sender`` answer a request of ours?"""
        pending = self._pending.get(cid)
        return pending is not None and (pending.dest is None or pending.dest == sender)

    def take(self, cid: bytes, sender: str) -> W | None:
        """The waiter of our request ``cid`` if ``sender`` answers it; the entry is gone after.

        So a reply is matched at most once: a second reply with the same id
        (a replayed or duplicated one) finds nothing.
        """
        pending = self._pending.get(cid)
        if pending is None or (pending.dest is not None and pending.dest != sender):
            return None
        del self._pending[cid]
        return pending.waiter

    def drain(self) -> list[W]:
        """Every waiter still pending, removed (the node is stopping)."""
        waiters = [p.waiter for p in self._pending.values()]
        self._pending.clear()
        return waiters

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------- forwarded requests

    def remember_forwarded(self, cid: bytes, origin: str, dest: str) -> None:
        """We relayed request ``cid`` from ``origin`` to ``dest``: let one reply through."""
        self._forwarded[cid] = (origin, dest, self._clock() + self.forward_ttl)
        self._forwarded.move_to_end(cid)
        while len(self._forwarded) > self.max_forwarded:
            self._forwarded.popitem(last=False)

    def forwarded_reply_ok(self, cid: bytes, sender: str, recipient: str) -> bool:
        """Is a reply ``cid`` from ``sender`` to ``recipient`` one we relayed the request of?"""
        entry = self._forwarded.get(cid)
        return (
            entry is not None
            and entry[0] == recipient
            and entry[1] == sender
            and entry[2] > self._clock()
        )

    def forwarded_reply(self, cid: bytes) -> None:
        """The reply to relayed request ``cid`` went through: no second one will."""
        self._forwarded.pop(cid, None)

    @property
    def forwarded_count(self) -> int:
        return len(self._forwarded)

    # ------------------------------------------------------------------ common

    def reply_ok(self, cid: bytes, sender: str, recipient: str, *, local: bool) -> bool:
        """The pipeline's question: does this REPLY answer a request we sent or relayed?"""
        if local:
            return self.expects(cid, sender)
        return self.forwarded_reply_ok(cid, sender, recipient)

    def purge(self) -> int:
        """Drop the expired forwarded entries; return how many went."""
        now = self._clock()
        forwarded = self._forwarded
        gone = 0
        while forwarded:
            cid, entry = next(iter(forwarded.items()))
            if entry[2] > now:
                break
            del forwarded[cid]
            gone += 1
        return gone
