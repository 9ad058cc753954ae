"""The small core the node's components meet through, and the link they share.

:class:`~securemesh.node.MeshNode` is the core: it owns the links, the
transport and the receive loops, and offers its components (the session table,
certificate lookup and hold, revocation, dispatch) only what :class:`Core`
lists — encode, send, request, spawn, learn, reject, plus the read-only facts
(who we are, the clock, the parent, the route table). A component never calls
another component; what crosses between them goes through the core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from securemesh.transport import Channel, Listener

if TYPE_CHECKING:
    from pydantic import BaseModel

    from securemesh.crypto.certs import Certificate, Tier
    from securemesh.errors import RemoteError
    from securemesh.node._config import NodeConfig
    from securemesh.node._directory import Directory
    from securemesh.node._metrics import Metrics
    from securemesh.node._pipeline import AnyMessage, Pipeline, VerifiedMessage
    from securemesh.node._routes import RouteTable
    from securemesh.node._sessions import SessionEntry
    from securemesh.wire import Flags

__all__ = ["Core", "Link", "Reply"]


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer with raw frames (return a bare model/bytes when there are none)."""

    body: BaseModel | bytes
    frames: Sequence[bytes | memoryview] = ()


class Link:
    """One neighbour: a channel plus the peer's CURVE key (and node id once known)."""

    __slots__ = ("channel", "connected_at", "is_parent", "last_seen", "node_id", "peer", "report")

    def __init__(self, channel: Channel, peer: bytes, *, is_parent: bool, now: float) -> None:
        self.channel = channel
        self.peer = peer
        self.is_parent = is_parent
        self.node_id: str | None = None
        self.last_seen = now
        self.connected_at = now
        self.report: dict[str, object] | None = None

    async def send(self, frames: Sequence[bytes | memoryview], timeout: float | None) -> None:
        await self.channel.send(self.peer, cast("Sequence[bytes]", frames), timeout=timeout)


class Core(Protocol):
    """What a component may use of the node (MeshNode implements it)."""

    node_id: str
    tier: Tier
    config: NodeConfig
    metrics: Metrics
    directory: Directory
    parent_id: str | None
    certificate: Certificate

    _clock: Callable[[], float]
    _stopped: bool
    _parent_link: Link | None
    _routes: RouteTable[Link]
    _listener: Listener | None
    pipeline: Pipeline
    #: the node's tasks (handlers, background work), drained and cancelled on stop
    _tasks: set[asyncio.Task[None]]

    def _encode(
        self,
        recipient: str,
        msg_type: str,
        body: BaseModel | bytes,
        frames: Sequence[bytes | memoryview],
        *,
        flags: Flags = ...,
        correlation_id: bytes = ...,
        session: SessionEntry | None = None,
    ) -> list[bytes | memoryview]: ...

    async def _send_on(self, link: Link, frames: Sequence[bytes | memoryview]) -> None: ...

    async def _fan_out(self, frames: Sequence[bytes | memoryview], exclude: Link | None) -> int: ...

    async def _request_on(
        self,
        link: Link,
        recipient: str,
        msg_type: str,
        body: BaseModel | bytes,
        frames: Sequence[bytes | memoryview] = (),
        *,
        timeout: float | None,
        session: SessionEntry | None = None,
        expect: str | None,
    ) -> VerifiedMessage: ...

    async def request(
        self,
        dest: str,
        msg_type: str,
        body: BaseModel | bytes,
        frames: Sequence[bytes | memoryview] = (),
        *,
        timeout: float | None = None,
    ) -> VerifiedMessage: ...

    def _spawn(self, coro: Awaitable[None]) -> None: ...

    async def _send_reply(
        self, msg: AnyMessage, result: object, *, msg_type: str | None = None
    ) -> None: ...

    async def _send_error(self, msg: AnyMessage, code: str, message: str = "") -> None: ...

    def _learn(
        self,
        blobs: Sequence[str],
        intermediates: Sequence[bytes] = (),
        msg: VerifiedMessage | None = None,
    ) -> list[Certificate]: ...

    def _reject(self, msg: AnyMessage, exc: RemoteError) -> None: ...

    def _route(
        self, msg: AnyMessage, channel: Channel, from_parent: bool
    ) -> Awaitable[None] | None: ...
