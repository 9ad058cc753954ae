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
the number of active peers. The high-water-mark table grows by one entry per
distinct sender ever evicted; senders are authenticated nodes (the replay
check runs after certificate and signature checks), so it is bounded by the
number of enrolled nodes, not by what an attacker sends. :meth:`ReplayGuard.high_water_marks`
and the ``restore`` argument let a node persist this state across restarts.

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

    __slots__ = ("_blocks", "_floor", "_nblocks", "_top", "_window")

    def __init__(self, *, blocks: int = DEFAULT_BLOCKS, floor: int | None = None) -> None:
        """``floor``: refuse every sequence ``<= floor`` (a restored high-water mark)."""
        if not isinstance(blocks, int) or blocks < 2:
            raise ConfigError("a replay window needs at least 2 blocks")
        self._nblocks = blocks
        self._window = (blocks - 1) * self.BLOCK_BITS
        self._blocks = [0] * blocks
        self._top = -1
        self._floor = -1
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
    """Replay windows for many senders, with LRU eviction and a clock-skew bound."""

    DEFAULT_MAX_SENDERS: ClassVar[int] = 10_000
    DEFAULT_MAX_SKEW_MS: ClassVar[int] = 120_000

    __slots__ = ("_blocks", "_evicted", "_max_senders", "_max_skew_ms", "_windows")

    def __init__(
        self,
        *,
        max_senders: int = DEFAULT_MAX_SENDERS,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        window_blocks: int = ReplayWindow.DEFAULT_BLOCKS,
        restore: Mapping[str, int] | None = None,
    ) -> None:
        """``restore``: high-water marks from :meth:`high_water_marks` of an earlier run."""
        if max_senders < 1:
            raise ConfigError("max_senders must be at least 1")
        if max_skew_ms < 0:
            raise ConfigError("max_skew_ms must not be negative")
        self._max_senders = max_senders
        self._max_skew_ms = max_skew_ms
        self._blocks = window_blocks
        self._windows: OrderedDict[str, ReplayWindow] = OrderedDict()
        self._evicted: dict[str, int] = {}
        for sender, hwm in (restore or {}).items():
            _check_seq(hwm)
            self._evicted[sender] = hwm

    def __len__(self) -> int:
        """Number of senders with a live window."""
        return len(self._windows)

    def _window(self, sender: str) -> ReplayWindow | None:
        window = self._windows.get(sender)
        if window is not None:
            self._windows.move_to_end(sender)
        return window

    def check(self, sender: str, sequence: int, timestamp_ms: int, *, now_ms: int) -> None:
        """Raise :class:`ClockSkewError`, :class:`StaleMessage` or :class:`ReplayedMessage`.

        Changes no replay state (only the LRU order).
        """
        if abs(timestamp_ms - now_ms) > self._max_skew_ms:
            raise ClockSkewError("timestamp too far from our clock")
        window = self._window(sender)
        if window is not None:
            window.check(sequence)
            return
        _check_seq(sequence)
        floor = self._evicted.get(sender)
        if floor is not None and sequence <= floor:
            raise StaleMessage("sequence at or below the sender's recorded high-water mark")

    def accept(self, sender: str, sequence: int) -> None:
        """Record ``sequence`` for ``sender``; call only after the envelope verified."""
        windows = self._windows
        window = windows.get(sender)  # _window() inline (hot path)
        if window is not None:
            windows.move_to_end(sender)
        else:
            window = ReplayWindow(blocks=self._blocks, floor=self._evicted.get(sender))
            window.check(sequence)
            self._evicted.pop(sender, None)
            self._windows[sender] = window
            while len(self._windows) > self._max_senders:
                old_sender, old = self._windows.popitem(last=False)
                hwm = old.high_water_mark
                if hwm is not None:
                    self._evicted[old_sender] = hwm
        window.accept(sequence)

    def check_envelope(self, envelope: Envelope | UnverifiedEnvelope, *, now_ms: int) -> None:
        """:meth:`check` with the envelope's sender, sequence and timestamp."""
        self.check(envelope.sender, envelope.sequence, envelope.timestamp_ms, now_ms=now_ms)

    def accept_envelope(self, envelope: Envelope, *, now_ms: int) -> None:
        """Check and record a *verified* envelope (the type makes skipping verification hard)."""
        self.check_envelope(envelope, now_ms=now_ms)
        self.accept(envelope.sender, envelope.sequence)

    def high_water_marks(self) -> dict[str, int]:
        """Every sender's highest accepted sequence (live and evicted), for persistence."""
        marks = dict(self._evicted)
        for sender, window in self._windows.items():
            hwm = window.high_water_mark
            if hwm is not None:
                marks[sender] = hwm
        return marks
