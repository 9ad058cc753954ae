"""Encrypted edge storage from a device: a :class:`StorageClient` over the device's requests.

::

    with Device.connect(data_dir, passphrase=pw) as dev:
        identity = NodeIdentity.load(data_dir / "identity.key", pw)
        client = storage_client(dev, identity, index="cloud-1", k=4, n=6)
        asyncio.run(client.put("photos/1.jpg", open("1.jpg", "rb")))

The client's coroutines call the (thread-safe, synchronous) :meth:`Device.request`
in worker threads, so they run on any event loop, not the device's own.
Imported lazily by :mod:`securemesh.sdk` (it loads pydantic and the storage core).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from securemesh.storage import StorageClient

if TYPE_CHECKING:
    from securemesh.crypto.identity import NodeIdentity
    from securemesh.node import VerifiedMessage
    from securemesh.sdk._device import Device

__all__ = ["DeviceAudit", "DeviceRequester", "storage_client"]


class DeviceRequester:
    """A device's requests as the storage client's ``Requester``."""

    def __init__(self, device: Device) -> None:
        self.device = device

    async def request(
        self,
        dest: str,
        msg_type: str,
        body: BaseModel | bytes,
        frames: Sequence[bytes | memoryview] = (),
        *,
        timeout: float | None = None,
    ) -> VerifiedMessage:
        msg = await asyncio.to_thread(
            self.device.request, dest, msg_type, body, [bytes(f) for f in frames], timeout=timeout
        )
        return msg.verified


class DeviceAudit:
    """A device's :meth:`Device.record_audit` as the node seam's ``AuditRecorderLike``."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def record(
        self,
        kind: str,
        subject: tuple[str, str],
        *,
        outcome: str = "success",
        details: Mapping[str, Any] | None = None,
        event_id: str | None = None,
    ) -> str | None:
        return self.device.record_audit(
            kind,
            subject,
            outcome=outcome,
            details=dict(details) if details is not None else None,
            event_id=event_id,
        )

    def status(self) -> dict[str, object]:
        return {}


def storage_client(
    device: Device, identity: NodeIdentity, *, index: str, **options: Any
) -> StorageClient:
    """A storage client acting as ``device`` (its identity signs and unwraps; audit via it)."""
    return StorageClient(
        DeviceRequester(device),
        node_id=device.node_id,
        signer=identity.signer,
        kx_secret=identity.kx_secret(),
        kx_public=identity.kx_public,
        index=index,
        audit=DeviceAudit(device),
        **options,
    )
