"""Services the integration tests load into daemons (see SERVICES there)."""

from __future__ import annotations

import json

from securemesh.node import MeshNode, VerifiedMessage


def register(node: MeshNode) -> None:
    async def echo(msg: VerifiedMessage) -> bytes:
        return json.dumps(
            {"by": node.node_id, "from": msg.sender, "body": msg.body_bytes.decode()}
        ).encode()

    async def broadcast(msg: VerifiedMessage) -> bytes:
        links = await node.broadcast("app.news", msg.body_bytes)
        return json.dumps({"links": links}).encode()

    node.on("app.echo", echo)
    node.on("app.broadcast", broadcast)
