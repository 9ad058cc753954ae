"""Revocation: installing signed revocation lists, enforcing them, passing them on, syncing.

Owns the newest installed list (to persist it), the installed list per root
(to answer ``revocation.sync``), when the node last synced with its parent,
and the children a list revoked that still have to hear of it before their
connections are cut. It meets the rest of the node only through the
:class:`~securemesh.node._core.Core` (encode, fan out, request, reject, the
route table and the listener).

* ``mesh.revocation`` (a broadcast from a cloud node, the signed list in raw
  frame 0) is verified and installed by the directory (rollbacks refused);
  the node then drops routes and sessions of revoked nodes (the directory's
  ``on_revoked``) and calls :meth:`Listener.reauthenticate`, so a revoked peer
  is cut off on its live connection — after the broadcast went down to every
  child, the revoked ones too (:meth:`Revocation.tell_revoked_then_cut`).
* ``revocation.sync``: after every (re)connect to its parent and every
  ``revocation_sync_interval`` seconds, a node sends its installed list
  version per root; the parent answers with its own and every newer signed
  list as a raw frame. Each is verified like a broadcast one, installed,
  enforced and passed down as a ``mesh.revocation`` broadcast of this node.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from securemesh.crypto.certs import SignedRevocationList
from securemesh.errors import (
    AuthenticationError,
    AuthorizationError,
    PeerUnavailable,
    RemoteError,
    SecureMeshError,
    TransportError,
)
from securemesh.messages import MESH_REVOCATION, REVOCATION_SYNC, Revocation, RevocationSync
from securemesh.node._core import Core, Link, Reply

if TYPE_CHECKING:
    from securemesh.node._pipeline import VerifiedMessage

__all__ = ["RevocationState"]

log = logging.getLogger("securemesh.node")

#: revocation lists a sync reply may carry (one per root; roots are few)
_MAX_PULLED = 8


class RevocationState:
    """The node's revocation lists and their enforcement (see the module docstring)."""

    def __init__(self, core: Core) -> None:
        self._core = core
        #: the newest signed revocation list this node installed (to persist it)
        self.list_bytes: bytes | None = None
        self.list_version: int | None = None
        #: the installed signed list per root, to answer ``revocation.sync``
        self._blobs: dict[str, bytes] = {}
        self.synced_at = float("-inf")
        #: children a revocation broadcast revoked, told before the cut
        self._cut_after_fan_out: list[Link] | None = None

    # ------------------------------------------------------------ installing

    def note_list(self, version: int, blob: bytes) -> None:
        """A list was installed in the directory: remember it (to persist and to serve)."""
        if self.list_version is None or version > self.list_version:
            self.list_version = version
            self.list_bytes = blob
        with contextlib.suppress(RemoteError):
            issuer = SignedRevocationList.from_bytes(blob).unverified_list().issuer
            installed = self._core.directory.trust.revocation_list(issuer)
            if installed is not None and installed.version == version:
                self._blobs[issuer] = bytes(blob)

    def versions(self) -> dict[str, int]:
        """The installed list version per root."""
        trust = self._core.directory.trust
        return {
            root: rl.version
            for root in trust.roots
            if (rl := trust.revocation_list(root)) is not None
        }

    def _install(self, blob: bytes | SignedRevocationList) -> tuple[int, list[Link]]:
        """Install a list in the directory; return its version and the children it revoked."""
        children_now = self._core._routes.children
        children = list(children_now.values())
        rl = self._core.directory.update_revocation_list(blob)  # drops revoked children's state
        gone = [c for c in children if children_now.get(c.peer) is not c]
        return rl.version, gone

    def _cut_later(self, gone: list[Link]) -> None:
        self._cut_after_fan_out = gone + (self._cut_after_fan_out or [])

    async def publish(self, revocation_list: bytes) -> int:
        """Install a signed revocation list here and broadcast it (cloud nodes)."""
        core = self._core
        version, gone = self._install(revocation_list)  # refused from here on
        self.note_list(version, bytes(revocation_list))
        self._cut_later(gone)
        out = core._encode(
            "", MESH_REVOCATION, Revocation(version=version), [bytes(revocation_list)]
        )
        try:  # every child hears of it, revoked ones too; their links go after
            return await core._fan_out(out, exclude=None)
        finally:
            await self.tell_revoked_then_cut(out)

    def on_revocation(self, msg: VerifiedMessage) -> None:
        """``mesh.revocation``: install the list; cut revoked children once it went down."""
        if msg.envelope.recipient:
            raise AuthorizationError("revocation lists are broadcast")
        raws = msg.raw_frames
        if len(raws) != 1:
            raise AuthenticationError("revocation broadcast needs exactly one raw frame")
        blob = bytes(raws[0])
        version, gone = self._install(blob)
        self.note_list(version, blob)
        # From now on the pipeline refuses revoked senders (step 3). Cutting their
        # connections waits until the node has passed the list on to our children
        # (pending_cut) — the revoked ones too, so a revoked device hears of it
        # instead of just losing its edge (see tell_revoked_then_cut).
        link = msg.link
        if isinstance(link, Link) and link.is_parent:
            self._cut_later(gone)
        else:
            self.enforce()

    @property
    def pending_cut(self) -> bool:
        """Children wait to hear of a list before they are cut off (after a fan-out)."""
        return self._cut_after_fan_out is not None

    async def tell_revoked_then_cut(self, frames: Sequence[bytes | memoryview]) -> None:
        """Pass a revocation broadcast to the children it revoked, then cut them off."""
        gone, self._cut_after_fan_out = self._cut_after_fan_out or [], None
        try:
            for link in gone:
                with contextlib.suppress(TransportError):
                    await link.send(frames, self._core.config.limits.forward_timeout)
        finally:
            self.enforce()

    def enforce(self) -> None:
        """Cut off every child whose certificate is revoked now (on its live connection)."""
        core = self._core
        if core._listener is not None:
            for key in core._listener.reauthenticate():
                core._routes.drop_peer(key)

    # --------------------------------------------------------------- syncing

    def on_sync(self, msg: VerifiedMessage) -> Reply:
        """``revocation.sync``: a child's versions in, ours out, every newer list as a frame."""
        if msg.relayed or not msg.is_request:
            raise AuthorizationError("revocation sync is a request between direct peers")
        theirs = msg.body(RevocationSync).versions
        mine = self.versions()
        frames = [
            self._blobs[root]
            for root, version in mine.items()
            if version > theirs.get(root, 0) and root in self._blobs
        ]
        return Reply(RevocationSync(versions=mine), frames)

    async def sync(self, *, timeout: float | None = None) -> int:
        """Pull from the parent every revocation list newer than ours; return how many."""
        core = self._core
        if core.parent_id is None:
            raise PeerUnavailable("no parent to sync revocation lists with")
        reply = await core.request(
            core.parent_id, REVOCATION_SYNC, RevocationSync(versions=self.versions()),
            timeout=timeout,
        )  # fmt: skip
        self.synced_at = core._clock()
        installed = 0
        for raw in reply.raw_frames[:_MAX_PULLED]:
            try:
                installed += await self._install_pulled(bytes(raw))
            except RemoteError as exc:
                core._reject(reply, exc)
        return installed

    async def _install_pulled(self, blob: bytes) -> bool:
        core = self._core
        signed = SignedRevocationList.from_bytes(blob)
        before = core.directory.trust.revocation_list(signed.unverified_list().issuer)
        version, gone = self._install(signed)  # verifies; refuses rollbacks
        if before is not None and version <= before.version:
            return False
        self.note_list(version, blob)
        log.info(
            "revocation list pulled from the parent",
            extra={"event": "revocation_synced", "version": version},
        )
        # tell every child, the revoked ones too, before cutting those off
        frames = core._encode("", MESH_REVOCATION, Revocation(version=version), [blob])
        self._cut_later(gone)
        try:
            await core._fan_out(frames, exclude=None)
        finally:
            await self.tell_revoked_then_cut(frames)
        return True

    async def sync_quietly(self) -> None:
        """:meth:`sync` from the heartbeat: a failure is logged, not raised."""
        try:
            await self.sync(timeout=self._core.config.limits.request_timeout)
        except (TimeoutError, SecureMeshError) as exc:
            log.info(
                "revocation sync failed",
                extra={"event": "revocation_sync_failed", "error": repr(exc)},
            )
