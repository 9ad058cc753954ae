"""The storage service's message types and their strict JSON bodies (docs/storage.md §4).

Bulk data never travels in a body: a shard or a signed manifest is the one
raw frame of its message (``storage.shard.put`` request,
``storage.shard.get`` reply, ``storage.manifest.put`` request,
``storage.manifest.get`` reply).
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MSG_CHALLENGE",
    "MSG_LOCATE",
    "Located",
    "Relocation",
    "Challenge",
    "ProofReply",
    "MSG_MANIFEST_DELETE",
    "MSG_MANIFEST_GET",
    "MSG_MANIFEST_LIST",
    "MSG_MANIFEST_PUT",
    "MSG_NODES",
    "MSG_SHARD_DELETE",
    "MSG_SHARD_GET",
    "MSG_SHARD_PUT",
    "STORAGE_TYPES",
    "Done",
    "ManifestRef",
    "NameList",
    "NodeEntry",
    "NodeList",
    "ObjectRef",
    "ShardRef",
    "ShardPutBody",
]

MSG_SHARD_PUT: Final = "storage.shard.put"
MSG_SHARD_GET: Final = "storage.shard.get"
MSG_SHARD_DELETE: Final = "storage.shard.delete"
MSG_MANIFEST_PUT: Final = "storage.manifest.put"
MSG_MANIFEST_GET: Final = "storage.manifest.get"
MSG_MANIFEST_DELETE: Final = "storage.manifest.delete"
MSG_MANIFEST_LIST: Final = "storage.manifest.list"
MSG_NODES: Final = "storage.nodes"
MSG_CHALLENGE: Final = "storage.challenge"
MSG_LOCATE: Final = "storage.locate"
STORAGE_TYPES: Final = (
    MSG_SHARD_PUT,
    MSG_SHARD_GET,
    MSG_SHARD_DELETE,
    MSG_MANIFEST_PUT,
    MSG_MANIFEST_GET,
    MSG_MANIFEST_DELETE,
    MSG_MANIFEST_LIST,
    MSG_NODES,
    MSG_CHALLENGE,
    MSG_LOCATE,
)

_STRICT = ConfigDict(strict=True, frozen=True, extra="forbid")
Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ObjectIdHex = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
NodeIdStr = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
ObjectName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._/-]{1,255}$")]


class ShardPutBody(BaseModel):
    """``storage.shard.put``: store the one raw frame under ``hash`` for ``object_id``."""

    model_config = _STRICT
    object_id: ObjectIdHex
    hash: Hex32


class ShardRef(BaseModel):
    """``storage.shard.get``: the shard with this content address."""

    model_config = _STRICT
    hash: Hex32


class ObjectRef(BaseModel):
    """``storage.shard.delete``: drop the sender's shards of this object."""

    model_config = _STRICT
    object_id: ObjectIdHex


class ManifestRef(BaseModel):
    """``storage.manifest.get|delete|put``: ``owner``'s manifest for ``name``."""

    model_config = _STRICT
    owner: NodeIdStr
    name: ObjectName


class Done(BaseModel):
    """A reply: whether something changed (stored anew, deleted)."""

    model_config = _STRICT
    changed: bool


class NameList(BaseModel):
    model_config = _STRICT
    names: list[ObjectName] = Field(max_length=1000)


class NodeEntry(BaseModel):
    model_config = _STRICT
    node_id: NodeIdStr
    failure_domain: Annotated[str, Field(max_length=64)] = ""


class NodeList(BaseModel):
    """``storage.nodes`` reply: the live nodes running the storage service."""

    model_config = _STRICT
    nodes: list[NodeEntry] = Field(max_length=4096)


class Challenge(BaseModel):
    """``storage.challenge``: prove holding shard ``hash`` (blocks chosen by ``nonce``)."""

    model_config = _STRICT
    hash: Hex32
    nonce: Hex32
    count: int = Field(ge=1, le=16)


class ProofReply(BaseModel):
    """The reply: one inclusion path per challenged block (the blocks are raw frames)."""

    model_config = _STRICT
    paths: list[Annotated[list[Hex32], Field(max_length=64)]] = Field(max_length=16)


class Relocation(BaseModel):
    """Shard column ``column`` of an object, on ``from_node`` in its manifest, is on ``node``."""

    model_config = _STRICT
    column: int = Field(ge=0, lt=32)
    from_node: NodeIdStr
    node: NodeIdStr


class Located(BaseModel):
    """``storage.locate`` reply: the index's repairs of one object (``ObjectRef`` request)."""

    model_config = _STRICT
    moves: list[Relocation] = Field(max_length=32)
