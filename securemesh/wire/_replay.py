"""Replay protection: a per-sender sliding window and a bounded guard over many senders.

Theory of operation
-------------------
Every envelope carries the sender's 64-bit ``sequence`` (strictly increasing
per sender, persisted across reboots by :class:`~securemesh.wire.SequenceCounter`)
and a millisecond ``timestamp_ms``. A receiver accepts a sequence number at
most once, tolerates reordering inside a window, and refuses numbers too old
to tell.

:class:`ReplayWindow` is the bitmap of RFC 6479 ("IPsec Anti-Replay Algorithm
without Bit Shifting"), the scheme Linux WireGuard uses
(``drivers/net/wireguard/receive.c``, ``counter_validate``): a ring of
``BLOCKS`` 64-bit words. Bit ``s mod 64`` of word ``(s div 64) mod BLOCKS``
records sequence ``s``. With ``BLOCKS = 129`` the window is
``(BLOCKS - 1) * 64 = 8192`` numbers — the size Linux WireGuard moved to from
2,048 after reordering caused false rejects. For the highest accepted number
``top``:

* ``s > top``: new; accepting it zeroes the words between the old and the new
  top (at most ``BLOCKS`` of them) and moves ``top``. No bit shifting, O(1).
* ``top - s >= WINDOW``: too old to tell → :class:`~securemesh.errors.StaleMessage`.
* otherwise: one bit test → :class:`~securemesh.errors.ReplayedMessage` if set.

The API is split, sans-I/O: :meth:`ReplayWindow.check` raises or returns and
never changes state (run it before the expensive signature check if you
like); :meth:`ReplayWindow.accept` records the number and must be called
only after the MAC or signature verified — otherwise a forger could burn
sequence numbers of an honest sender. ``accept`` re-checks, so a number is
never accepted twice even if ``check`` was skipped.

:class:`ReplayGuard` keeps one window per sender, bounded by ``max_senders``
with least-recently-used eviction. Evicting a window must not reopen old
numbers, so the guard keeps the evicted sender's high-water mark (one int)
and a revived sender's window starts *closed* at that mark: every number at or
below it is refused as stale, numbers above it are accepted. Consequence: a
sender evicted while messages were still in flight may see some of its
delayed (never-seen) messages rejected — safe, and rare with a cap well above
the number of active peers.

The high-water-mark table is bounded too (``max_evicted``, oldest evicted
first out), so nothing here grows with the number of distinct senders ever
seen. Dropping a mark must not reopen that sender's old numbers either; the
clock-skew bound closes them instead. Each window remembers the newest
``timestamp_ms`` it accepted and the mark keeps it; dropping a mark raises
the guard's *timestamp floor* to that value, and a sender with neither a
window nor a mark is accepted only with ``timestamp_ms`` above the floor.
Every message the dropped sender had sent carries a timestamp at or below
the floor, so none of them can be replayed (a window opened while the floor
was raised keeps refusing timestamps at or below it, in case its sender is
one of those dropped); honest senders, whose timestamps
track the clock, are refused (``stale``) only while the floor is in the
future, i.e. for at most one skew bound after more than ``max_senders +
max_evicted`` distinct senders were active within one skew bound. Marks
restored from disk (``restore``) carry ``restored_at_ms`` plus the skew
bound as their timestamp (everything accepted before the restart was sent
before then); without ``restored_at_ms`` (or when a caller never passes
timestamps) the conservative newest-timestamp-seen plus the skew bound is used.
:meth:`ReplayGuard.high_water_marks` and the ``restore`` argument let a node
persist this state across restarts; :meth:`ReplayGuard.stats` reports the sizes.

Only authenticated senders may reach a guard (the node's pipeline runs it after
certificate and signature checks; first-contact peers without a certificate
have their own per-connection state in the node, never a sender's window).

The guard also bounds clock skew: ``|timestamp_ms - now_ms|`` must not exceed
``max_skew_ms`` (default 120 s), else :class:`~securemesh.errors.ClockSkewError`.
``now_ms`` is always passed in by the caller.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from securemesh.errors import ClockSkewError, ConfigError, LocalError, ReplayedMessage, StaleMessage

if TYPE_CHECKING:
    from securemesh.wire._envelope import Envelope, UnverifiedEnvelope

__all__ = ["ReplayGuard", "ReplayWindow"]

_U64_MAX = 2**64 - 1


class ReplayWindow:
    """The RFC 6479 anti-replay bitmap for one sender (window of 8,192 by default)."""

    BLOCK_BITS: ClassVar[int] = 64
    #: Default ring size: (129 - 1) * 64 = 8192 sequence numbers of window.
    DEFAULT_BLOCKS: ClassVar[int] = 129

    __slots__ = ("_blocks", "_floor", "_nblocks", "_top", "_window", "last_ms", "min_ms")

    def __init__(self, *, blocks: int = DEFAULT_BLOCKS, floor: int | None = None) -> None:
        """``floor``: refuse every sequence ``<= floor`` (a restored high-water mark)."""
        if not isinstance(blocks, int) or blocks < 2:
            raise ConfigError("a replay window needs at least 2 blocks")
        self._nblocks = blocks
        self._window = (blocks - 1) * self.BLOCK_BITS
        self._blocks = [0] * blocks
        self._top = -1
        self._floor = -1
        #: newest timestamp_ms its owner recorded (ReplayGuard), -1 if none
        self.last_ms = -1
        #: its owner refuses timestamps at or below this (ReplayGuard's floor), -1: none
        self.min_ms = -1
        if floor is not None:
            _check_seq(floor)
            self._top = floor
            self._floor = floor

    @property
    def window_size(self) -> int:
        """How far behind the highest accepted number a new one may be."""
        return self._window

    @property
    def high_water_mark(self) -> int | None:
        """The highest sequence accepted (or restored), None if none yet."""
        return None if self._top < 0 else self._top

    def check(self, sequence: int) -> None:
        """Raise if ``sequence`` must be refused; change nothing."""
        _check_seq(sequence)
        top = self._top
        if sequence > top:
            return
        if sequence <= self._floor or top - sequence >= self._window:
            raise StaleMessage("sequence is older than the replay window")
        word = self._blocks[(sequence // self.BLOCK_BITS) % self._nblocks]
        if (word >> (sequence % self.BLOCK_BITS)) & 1:
            raise ReplayedMessage("sequence already accepted")

    def accept(self, sequence: int) -> None:
        """Record ``sequence`` (after authentication). Raises like :meth:`check`."""
        top = self._top
        # Fast path, the in-order stream: a plain int above the top passes every
        # rule of check() (top >= -1, so it is >= 0; floor <= top).
        if not (type(sequence) is int and top < sequence <= _U64_MAX):
            self.check(sequence)
        bits, nblocks, blocks = self.BLOCK_BITS, self._nblocks, self._blocks
        if sequence > self._top:
            current = self._top // bits  # -1 before the first accept: harmless
            new = sequence // bits
            for i in range(1, min(new - current, nblocks) + 1):
                blocks[(current + i) % nblocks] = 0
            self._top = sequence
        index = (sequence // bits) % nblocks
        blocks[index] |= 1 << (sequence % bits)

    def __repr__(self) -> str:
        return f"ReplayWindow(top={self.high_water_mark}, window={self._window})"


def _check_seq(sequence: int) -> None:
    if not isinstance(sequence, int) or isinstance(sequence, bool):
        raise LocalError("a sequence number is an int")
    if not 0 <= sequence <= _U64_MAX:
        raise LocalError("a sequence number is a u64")


class ReplayGuard:
    """Replay windows for many senders, with LRU eviction and a clock-skew bound.

    Bounded in every table: ``max_senders`` live windows, ``max_evicted``
    high-water marks of evicted senders (module docstring).
    """

    DEFAULT_MAX_SENDERS: ClassVar[int] = 10_000
    #: (10,000 windows + 20,000 marks of ids up to 64 characters stay well under the
    #: daemon's 4 MiB limit for replay.json)
    DEFAULT_MAX_EVICTED: ClassVar[int] = 20_000
    DEFAULT_MAX_SKEW_MS: ClassVar[int] = 120_000

    __slots__ = (
        "_blocks",
        "_evicted",
        "_max_evicted",
        "_max_senders",
        "_max_skew_ms",
        "_ts_floor_ms",
        "_windows",
        "dropped_marks",
    )

    def __init__(
        self,
        *,
        max_senders: int = DEFAULT_MAX_SENDERS,
        max_evicted: int = DEFAULT_MAX_EVICTED,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        window_blocks: int = ReplayWindow.DEFAULT_BLOCKS,
        restore: Mapping[str, int] | None = None,
        restored_at_ms: int | None = None,
    ) -> None:
        """``restore``: high-water marks from :meth:`high_water_marks` of an earlier run,
        ``restored_at_ms`` the time of the restart (module docstring)."""
        if max_senders < 1 or max_evicted < 1:
            raise ConfigError("max_senders and max_evicted must be at least 1")
        if max_skew_ms < 0:
            raise ConfigError("max_skew_ms must not be negative")
        self._max_senders = max_senders
        self._max_evicted = max_evicted
        self._max_skew_ms = max_skew_ms
        self._blocks = window_blocks
        self._windows: OrderedDict[str, ReplayWindow] = OrderedDict()
        #: evicted sender -> (high-water mark, newest timestamp_ms or -1, the window's
        #: timestamp floor or -1), oldest first
        self._evicted: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        self._ts_floor_ms = -1
        #: high-water marks dropped from the bounded table (each raised the floor)
        self.dropped_marks = 0
        restored_ts = -1 if restored_at_ms is None else restored_at_ms + max_skew_ms
        for sender, hwm in (restore or {}).items():
            _check_seq(hwm)
            self._evicted[sender] = (hwm, restored_ts, -1)
            self._bound_evicted()

    def __len__(self) -> int:
        """Number of senders with a live window."""
        return len(self._windows)

    def stats(self) -> dict[str, int]:
        """Sizes of the bounded tables and the timestamp floor (for status reports)."""
        return {
            "senders": len(self._windows),
            "evicted_marks": len(self._evicted),
            "dropped_marks": self.dropped_marks,
            "timestamp_floor_ms": self._ts_floor_ms,
        }

    def _bound_evicted(self) -> None:
        while len(self._evicted) > self._max_evicted:
            _sender, (_hwm, last_ms, _min) = self._evicted.popitem(last=False)
            if last_ms < 0:  # unknown: everything seen so far, plus the skew bound
                last_ms = self._newest_ms() + self._max_skew_ms
            self._ts_floor_ms = max(self._ts_floor_ms, last_ms)
            self.dropped_marks += 1

    def _newest_ms(self) -> int:
        """The newest timestamp recorded anywhere here (rare path: O(senders))."""
        newest = max((w.last_ms for w in self._windows.values()), default=0)
        return max(newest, max((mark[1] for mark in self._evicted.values()), default=0), 0)

    def _window(self, sender: str) -> ReplayWindow | None:
        window = self._windows.get(sender)
        if window is not None:
            self._windows.move_to_end(sender)
        return window

    def _check_new(
        self, sender: str, sequence: int, timestamp_ms: int | None
    ) -> tuple[int | None, int]:
        """Rules for a sender without a live window.

        Returns the new window's sequence floor (its mark, if any) and timestamp
        floor: a sender first seen after marks were dropped may be one of them,
        so its window keeps refusing timestamps at or below the guard's floor.
        """
        _check_seq(sequence)
        mark = self._evicted.get(sender)
        if mark is not None:
            hwm, _last, min_ms = mark
            if sequence <= hwm:
                raise StaleMessage("sequence at or below the sender's recorded high-water mark")
        else:
            hwm, min_ms = None, self._ts_floor_ms
        if timestamp_ms is not None and timestamp_ms <= min_ms:
            raise StaleMessage("timestamp at or below the replay state's floor")
        return hwm, min_ms

    def check(self, sender: str, sequence: int, timestamp_ms: int, *, now_ms: int) -> None:
        """Raise :class:`ClockSkewError`, :class:`StaleMessage` or :class:`ReplayedMessage`.

        Changes no replay state (only the LRU order).
        """
        if abs(timestamp_ms - now_ms) > self._max_skew_ms:
            raise ClockSkewError("timestamp too far from our clock")
        window = self._window(sender)
        if window is not None:
            if timestamp_ms <= window.min_ms:
                raise StaleMessage("timestamp at or below the replay state's floor")
            window.check(sequence)
            return
        self._check_new(sender, sequence, timestamp_ms)

    def accept(self, sender: str, sequence: int, timestamp_ms: int | None = None) -> None:
        """Record ``sequence`` for ``sender``; call only after the envelope verified.

        ``timestamp_ms`` (the envelope's) lets the bounded mark table drop
        marks safely (module docstring); pass it whenever there is one.
        """
        windows = self._windows
        window = windows.get(sender)  # _window() inline (hot path)
        if window is not None:
            windows.move_to_end(sender)
            if timestamp_ms is not None and timestamp_ms <= window.min_ms:
                raise StaleMessage("timestamp at or below the replay state's floor")
            window.accept(sequence)
        else:
            floor, min_ms = self._check_new(sender, sequence, timestamp_ms)
            window = ReplayWindow(blocks=self._blocks, floor=floor)
            window.accept(sequence)
            window.min_ms = min_ms
            mark = self._evicted.pop(sender, None)
            if mark is not None:
                window.last_ms = mark[1]
            windows[sender] = window
            while len(windows) > self._max_senders:
                old_sender, old = windows.popitem(last=False)
                hwm = old.high_water_mark
                if hwm is not None:
                    self._evicted[old_sender] = (hwm, old.last_ms, old.min_ms)
            self._bound_evicted()
        if timestamp_ms is not None and timestamp_ms > window.last_ms:
            window.last_ms = timestamp_ms

    def check_envelope(self, envelope: Envelope | UnverifiedEnvelope, *, now_ms: int) -> None:
        """:meth:`check` with the envelope's sender, sequence and timestamp."""
        self.check(envelope.sender, envelope.sequence, envelope.timestamp_ms, now_ms=now_ms)

    def accept_envelope(self, envelope: Envelope, *, now_ms: int) -> None:
        """Check and record a *verified* envelope (the type makes skipping verification hard)."""
        self.check_envelope(envelope, now_ms=now_ms)
        self.accept(envelope.sender, envelope.sequence, envelope.timestamp_ms)

    def high_water_marks(self) -> dict[str, int]:
        """Every sender's highest accepted sequence (live and evicted), for persistence.

        At most ``max_senders + max_evicted`` entries.
        """
        marks = {sender: mark[0] for sender, mark in self._evicted.items()}
        for sender, window in self._windows.items():
            hwm = window.high_water_mark
            if hwm is not None:
                marks[sender] = hwm
        return marks
