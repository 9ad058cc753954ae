"""``securemesh.transport``: one seam for moving multipart frames between authenticated peers.

See :mod:`securemesh.transport._base` for the semantics every implementation
shares (addressing by CURVE key, bounded queues and back-pressure, close).
Implementations: :class:`ZmqTransport` (pyzmq ``zmq.asyncio``, CurveZMQ + ZAP)
and :class:`MemoryTransport` (the in-memory twin for tests); :class:`SyncRequester`
is a blocking one-request CURVE client for code without an event loop. ``ZmqTransport`` is
imported lazily so that ``import securemesh.transport`` does not load pyzmq.

This package moves frames and reports authenticated CURVE keys; it never
imports envelopes, certificates or sessions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securemesh.transport._base import (
    CURVE_KEY_SIZE,
    AllowKeys,
    Channel,
    Connection,
    CurveKeyPair,
    KeyAuthenticator,
    Listener,
    RejectHook,
    Transport,
    TransportOptions,
    TransportStats,
    deny_all_keys,
)
from securemesh.transport._memory import MemoryNetwork, MemoryTransport

if TYPE_CHECKING:
    from securemesh.transport._probe import Admission, curve_admission
    from securemesh.transport._sync import SyncRequester
    from securemesh.transport._zmq import ZmqTransport

__all__ = [
    "CURVE_KEY_SIZE",
    "Admission",
    "AllowKeys",
    "Channel",
    "Connection",
    "CurveKeyPair",
    "KeyAuthenticator",
    "Listener",
    "MemoryNetwork",
    "MemoryTransport",
    "RejectHook",
    "SyncRequester",
    "Transport",
    "TransportOptions",
    "TransportStats",
    "ZmqTransport",
    "curve_admission",
    "deny_all_keys",
]


def __getattr__(name: str) -> object:
    if name == "ZmqTransport":
        from securemesh.transport._zmq import ZmqTransport  # noqa: PLC0415  (lazy: pyzmq)

        return ZmqTransport
    if name == "SyncRequester":
        from securemesh.transport._sync import SyncRequester  # noqa: PLC0415  (lazy: pyzmq)

        return SyncRequester
    if name in ("Admission", "curve_admission"):
        from securemesh.transport import _probe  # noqa: PLC0415  (lazy: pyzmq)

        return getattr(_probe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
