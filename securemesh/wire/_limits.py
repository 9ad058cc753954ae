"""Hard size limits for envelopes, checked before any other work.

Theory of operation
-------------------
A receiver must never spend hashing, signature or parsing work on input that
is too large to be legitimate: that is the cheapest denial-of-service there
is. :func:`securemesh.wire.decode` therefore measures every frame first
(``memoryview(frame).nbytes`` reads no data) and compares it with a
:class:`Limits` value. Only when every frame and the total are within bounds
does it look at a single byte of content.

The defaults suit the bus: a JSON body is small control data (64 KiB), bulk
data travels in raw frames (16 MiB each, e.g. one storage shard or one
model-update chunk), and a whole envelope is at most 64 MiB. A deployment may
tighten them (devices typically do) or loosen them, but the format itself
caps the header (see ``MAX_HEADER_SIZE``) and the raw-frame count (u16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from securemesh.errors import ConfigError

__all__ = ["Limits"]

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits for one envelope, in bytes and frame counts.

    ``max_frames`` counts every frame (header, body, raw frames and the auth
    frame), so an envelope has at most ``max_frames - 3`` raw frames.
    """

    #: Smallest legal frame count: header, body, auth.
    MIN_FRAMES: ClassVar[int] = 3
    #: Largest header the v1 format can express (fixed part + three 64-byte strings).
    MAX_HEADER_SIZE: ClassVar[int] = 59 + 3 * 64
    #: Largest raw-frame count the header can express (u16).
    MAX_RAW_FRAMES: ClassVar[int] = 0xFFFF

    max_frames: int = 64
    max_header: int = 256
    max_body: int = 64 * KIB
    max_raw_frame: int = 16 * MIB
    max_total: int = 64 * MIB

    def __post_init__(self) -> None:
        for name in ("max_frames", "max_header", "max_body", "max_raw_frame", "max_total"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"Limits.{name} must be a non-negative int, got {value!r}")
        if self.max_frames < self.MIN_FRAMES:
            raise ConfigError(f"Limits.max_frames must be at least {self.MIN_FRAMES}")
        if self.max_frames > self.MAX_RAW_FRAMES + self.MIN_FRAMES:
            raise ConfigError("Limits.max_frames exceeds what the header can express")

    @property
    def max_raw_frames(self) -> int:
        """How many raw frames an envelope may carry under these limits."""
        return self.max_frames - self.MIN_FRAMES


#: The limits used when a caller passes none.
DEFAULT_LIMITS = Limits()
