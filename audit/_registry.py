"""The origin registry as plain data (private; used by :mod:`.log` and :mod:`.verify`).

The registry (``audit_origins``, :mod:`._schema`) is a key *history*: a node
id may have several Ed25519 verify keys (re-enrollment adds one; nothing is
replaced). An entry names its key by key id (:func:`~.events.event_key_id`,
the first 8 bytes of SHA-256 of the key); the id is derived here from the
stored key, never read from the database. :data:`Registry` is plain data so
that it can cross a process boundary (verify workers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from securemesh.audit.events import event_key_id
from securemesh.errors import AuthenticationError, UnknownOrigin

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["Registry", "UnregisteredKey", "load_registry", "registry_resolver", "unknown_key"]


class UnregisteredKey(AuthenticationError):
    """The origin is registered, but not with the key id the entry names.

    An :class:`~securemesh.errors.AuthenticationError` (reason ``bad_auth``),
    as before the registry kept a history: the event is not signed by a key
    the log knows for that node. (No key at all is ``UnknownOrigin``.)
    """


Registry = dict[str, dict[bytes, bytes]]
"""``{node id: {key id: verify key}}``, keys oldest first."""


def load_registry(conn: Connection) -> Registry:
    """Every registered key, read in one query on ``conn`` (in the caller's transaction)."""
    # imported here: the device side (via ._entry) never loads the database layer
    from sqlalchemy import select  # noqa: PLC0415

    from securemesh.audit import _schema as s  # noqa: PLC0415

    rows = conn.execute(
        select(s.origins.c.node_id, s.origins.c.verify_key).order_by(
            s.origins.c.node_id, s.origins.c.registered_ms, s.origins.c.verify_key
        )
    ).all()
    out: Registry = {}
    for node_id, vk in rows:
        key = bytes(vk)
        out.setdefault(str(node_id), {})[event_key_id(key)] = key
    return out


def registry_resolver(registry: Registry) -> Callable[[str, bytes], bytes]:
    """``resolve(origin, key id) -> verify key`` over ``registry``; UnknownOrigin if absent."""

    def resolve(origin: str, key_id: bytes) -> bytes:
        keys = registry.get(origin)
        if not keys:
            raise UnknownOrigin(f"origin {origin!r} is not registered")
        try:
            return keys[bytes(key_id)]
        except KeyError:
            raise unknown_key(origin, key_id) from None

    return resolve


def unknown_key(origin: str, key_id: bytes) -> UnregisteredKey:
    """The error for a registered origin without a key of id ``key_id``."""
    return UnregisteredKey(
        f"event was signed by a different key: origin {origin!r} has no registered key "
        f"with key id {key_id.hex()}"
    )
