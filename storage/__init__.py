"""``securemesh.storage``: sharded, encrypted edge storage (ARCHITECTURE.md §5, docs/storage.md).

Objects are encrypted on the writer, erasure-coded k-of-n across edge nodes and
described by a signed manifest; storage nodes hold ciphertext shards only.

* sans-I/O core: :func:`encode_segment` / :func:`decode_segment` (AEAD + zfec),
  :class:`Manifest` with :func:`sign_manifest` / :func:`open_manifest`,
  :func:`place` (rendezvous hashing over failure domains), and the
  :class:`PutPlan` / :class:`GetPlan` state machines;
* :class:`ShardStore` — an edge's content-addressed blobs and SQL metadata;
* :class:`StorageService` (``services = ["securemesh.storage:make_service"]``)
  and :class:`StorageClient` — the service on the node seam and the library
  client that drives the plans over a node's requests.
"""

import importlib
from typing import TYPE_CHECKING, Any

from securemesh.storage._client import (
    KIND_SHARE,
    GetReport,
    RepairReport,
    ReplyLike,
    Requester,
    StorageClient,
)
from securemesh.storage._codec import (
    OBJECT_ID_SIZE,
    EncodedSegment,
    decode_segment,
    encode_segment,
    regenerate_shards,
    segment_aad,
    shard_hash,
)
from securemesh.storage._errors import ObjectUnreadable, QuotaExceeded, ShardCorrupt, ShardNotFound
from securemesh.storage._manifest import (
    MAX_MANIFEST_SIZE,
    Manifest,
    SegmentEntry,
    merkle_root_of,
    open_manifest,
    peek_owner_unverified,
    share_manifest,
    sign_manifest,
    unshare_manifest,
    unwrap_data_key,
)
from securemesh.storage._placement import Candidate, place, rendezvous_score, replacements
from securemesh.storage._plan import (
    DEFAULT_K,
    DEFAULT_N,
    DEFAULT_SEGMENT_SIZE,
    GetPlan,
    PutPlan,
    ShardGet,
    ShardPut,
)
from securemesh.storage._proof import (
    StorageProof,
    challenge_indexes,
    prove_storage,
    shard_address,
    verify_storage_proof,
)

if TYPE_CHECKING:
    from securemesh.storage._service import StorageService, make_cloud_service, make_service
    from securemesh.storage._store import ShardStore, StoreStats

# The node side (service and shard store) needs SQLAlchemy; a client (a device
# putting and getting objects) must not pay for importing it, so these names load
# on first use (PEP 562). ``services = ["securemesh.storage:make_service"]``
# resolves them the same way.
_NODE_SIDE = {
    "StorageService": "securemesh.storage._service",
    "make_cloud_service": "securemesh.storage._service",
    "make_service": "securemesh.storage._service",
    "ShardStore": "securemesh.storage._store",
    "StoreStats": "securemesh.storage._store",
}


def __getattr__(name: str) -> Any:
    module = _NODE_SIDE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "KIND_SHARE",
    "StorageProof",
    "challenge_indexes",
    "prove_storage",
    "shard_address",
    "verify_storage_proof",
    "DEFAULT_K",
    "DEFAULT_N",
    "DEFAULT_SEGMENT_SIZE",
    "MAX_MANIFEST_SIZE",
    "OBJECT_ID_SIZE",
    "Candidate",
    "EncodedSegment",
    "GetPlan",
    "GetReport",
    "Manifest",
    "ObjectUnreadable",
    "PutPlan",
    "QuotaExceeded",
    "RepairReport",
    "ReplyLike",
    "Requester",
    "SegmentEntry",
    "ShardCorrupt",
    "ShardGet",
    "ShardNotFound",
    "ShardPut",
    "ShardStore",
    "StorageClient",
    "StorageService",
    "StoreStats",
    "decode_segment",
    "encode_segment",
    "make_cloud_service",
    "make_service",
    "merkle_root_of",
    "open_manifest",
    "peek_owner_unverified",
    "place",
    "regenerate_shards",
    "rendezvous_score",
    "replacements",
    "segment_aad",
    "shard_hash",
    "share_manifest",
    "sign_manifest",
    "unshare_manifest",
    "unwrap_data_key",
]
