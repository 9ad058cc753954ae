"""Encrypted edge storage from a device: a :class:`StorageClient` over the device's requests.

::

    with Device.connect(data_dir, passphrase=pw) as dev:
        identity = NodeIdentity.load(data_dir / "identity.key", pw)
        client = storage_client(dev, identity, index="cloud-1", k=4, n=6)
        asyncio.run(client.put("photos/1.jpg", open("1.jpg", "rb")))

The client's coroutines call the (thread-safe, synchronous) :meth:`Device.request`
in worker threads, so they run on any event loop, not the device's own.
Tasks over stored objects (docs/tasks.md) join the two independent service
packages here, the layer above both: :func:`submit_over_objects` is the owner's
side (``task.place``, then ``share`` with the chosen executor only, then the
submission pinned to it) and :func:`stored_object_reader` the executor's (a
read-only :class:`StorageClient` over the node's requests and X25519 key).

Imported lazily by :mod:`securemesh.sdk` (it loads pydantic and the storage core).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from securemesh.crypto.certs import verify_certificate
from securemesh.errors import AuthenticationError, LocalError
from securemesh.storage import StorageClient

if TYPE_CHECKING:
    from securemesh.crypto.identity import NodeIdentity
    from securemesh.node import NodeContext, VerifiedMessage
    from securemesh.sdk._device import Device, TaskHandle
    from securemesh.tasks import ObjectReader, ObjectRef, TaskIntent, TaskPlacement

__all__ = [
    "DeviceAudit",
    "DeviceRequester",
    "storage_client",
    "stored_object_reader",
    "submit_over_objects",
]


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


def stored_object_reader(index: str, *, timeout: float = 30.0) -> ObjectReader:
    """An executor's reader of stored-object task inputs (``TaskService(object_reader=)``).

    It fetches ``owner``'s object ``ref.name`` through a read-only
    :class:`StorageClient` over the node's own requests (``index``: the node
    answering ``storage.nodes``, the cloud): the manifest must verify under
    ``owner_key`` (what the scheduler vouches for), name ``ref.object_id`` and
    fit ``max_bytes``; the data key is unwrapped with this node's X25519 key, so
    it reads only what the owner shared with it (else ``AuthenticationError``).
    """

    async def read(
        ctx: NodeContext, owner: str, owner_key: bytes, ref: ObjectRef, max_bytes: int
    ) -> bytes:
        if ref.name is None:
            raise LocalError("the object reference has no name")
        own = ctx.certificates.get(ctx.node_id)
        client = StorageClient(
            ctx,
            node_id=ctx.node_id,
            signer=None,  # reads only
            kx_secret=ctx.unwrap_key,  # the node's key stays in the runtime
            kx_public=own.kx_key if own is not None else b"",
            index=index,
            timeout=timeout,
        )
        manifest = await client.stat(ref.name, owner=owner, owner_key=owner_key)
        if manifest.object_id != ref.object_id:
            raise AuthenticationError("the stored object is not the one the task names")
        if manifest.size > max_bytes:
            raise LocalError(f"the stored object exceeds {max_bytes} bytes")
        chunks: list[bytes] = []
        report = await client.get_into(ref.name, chunks.append, owner=owner, owner_key=owner_key)
        if report.manifest.object_id != ref.object_id:  # a newer version in between
            raise AuthenticationError("the stored object changed under the task")
        return b"".join(chunks)

    return read


def submit_over_objects(
    device: Device,
    client: StorageClient,
    scheduler: str,
    task_type: str,
    args: dict[str, Any] | None = None,
    *,
    names: Sequence[str],
    intent: TaskIntent,
    work: float = 1.0,
    inline: Sequence[bytes] = (),
    detached: bool | None = None,
) -> tuple[TaskHandle, TaskPlacement]:
    """Submit a task over the device's stored objects ``names`` (docs/tasks.md).

    1. each object's manifest gives an :class:`ObjectRef` (id, size, and its
       shard holders -- the placement with the index's repairs -- for locality);
    2. ``task.place`` asks ``scheduler`` where the task would run; the reply's
       certificate is verified against this device's trust store;
    3. only then is each object's data key wrapped for that node
       (``client.share``, a new signed manifest version, audited);
    4. the request is submitted pinned to that node (``executor``), which
       fetches and decrypts the objects itself.

    Synchronous (runs the client on a private event loop); the handle and
    the placement. ``client`` must act as ``device`` (the objects' owner).
    """
    # lazy: securemesh.tasks brings numpy (the scheduler), which a device that only
    # stores objects must not load
    from securemesh.tasks import MSG_PLACE, ObjectRef, TaskPlacement, new_request  # noqa: PLC0415

    if client.node_id != device.node_id:
        raise LocalError("the storage client must act as the submitting device")

    async def refs() -> list[ObjectRef]:
        out = []
        for name in names:
            manifest = await client.stat(name)
            holders = await client.locate(manifest)
            out.append(
                ObjectRef(
                    object_id=manifest.object_id,
                    size=manifest.size,
                    holders=holders[:64],
                    name=name,
                )
            )
        return out

    objects = asyncio.run(refs())
    probe, _ = new_request(
        task_type, args, intent=intent, work=work, inline=list(inline), objects=objects
    )
    reply = device.request(scheduler, MSG_PLACE, probe, list(inline))
    placement = TaskPlacement.model_validate_json(reply.body_bytes, strict=True)
    trust = device.async_device.node.directory.trust
    cert = verify_certificate(bytes.fromhex(placement.certificate), trust=trust, now=time.time())
    if cert.node_id != placement.node:
        raise AuthenticationError("the placement's certificate names another node")

    async def share() -> None:
        for ref in objects:
            assert ref.name is not None
            await client.share(ref.name, placement.node, cert.kx_key)

    asyncio.run(share())
    handle = device.submit(
        scheduler, task_type, args, intent=intent, work=work, inline=inline,
        objects=objects, detached=detached, executor=placement.node,
    )  # fmt: skip
    return handle, placement
