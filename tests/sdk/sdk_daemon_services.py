"""Services the SDK daemon tests load into the cloud and edge daemons (``services = [...]``)."""

from __future__ import annotations

import json

from securemesh.node import MeshNode, VerifiedMessage


def register(node: MeshNode) -> None:
    def echo(msg: VerifiedMessage) -> bytes:
        body = json.loads(msg.body_bytes)
        return json.dumps({"by": node.node_id, "from": msg.sender, "body": body}).encode()

    def whoami(msg: VerifiedMessage) -> bytes:
        """The certificate this node verified the request with (serial, expiry)."""
        cert = msg.certificate
        assert cert is not None
        facts = {"by": node.node_id, "from": msg.sender, "serial": cert.serial}
        return json.dumps(facts | {"not_after": cert.not_after}).encode()

    async def broadcast(msg: VerifiedMessage) -> bytes:
        """Broadcast the request's body as ``app.news`` to every child (and on down)."""
        links = await node.broadcast("app.news", msg.body_bytes)
        return json.dumps({"links": links}).encode()

    node.on("app.echo", echo)
    node.on("app.whoami", whoami)
    node.on("app.broadcast", broadcast)
