"""Storage's errors, in the one rooted tree of :mod:`securemesh.errors`.

::

    RemoteError
    ├── AuthenticationError
    │   └── ShardCorrupt          a shard's bytes do not hash to the hash asked for
    ├── QuotaExceeded             an edge's (or one owner's) quota is full
    └── ShardNotFound             the edge holds no shard / manifest by that name
    LocalError
    └── ObjectUnreadable          fewer than k good shards of a segment (the read fails)
"""

from __future__ import annotations

from securemesh.errors import AuthenticationError, LocalError, RemoteError

__all__ = ["ObjectUnreadable", "QuotaExceeded", "ShardCorrupt", "ShardNotFound"]


class ShardCorrupt(AuthenticationError):
    """A shard's bytes do not hash to the content address it was stored or asked under."""

    reason = "shard_corrupt"


class QuotaExceeded(RemoteError):
    """Storing this would exceed the node's total or per-owner quota."""

    reason = "quota_exceeded"


class ShardNotFound(RemoteError):
    """No shard (or manifest) by that name on this node."""

    reason = "not_found"


class ObjectUnreadable(LocalError):
    """A segment has fewer than k shards that verify: the object cannot be rebuilt."""
