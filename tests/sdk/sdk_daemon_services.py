"""Services the SDK daemon test loads into the cloud and edge daemons (``services = [...]``)."""

from __future__ import annotations

import json

from securemesh.node import MeshNode, VerifiedMessage


def register(node: MeshNode) -> None:
    def echo(msg: VerifiedMessage) -> bytes:
        body = json.loads(msg.body_bytes)
        return json.dumps({"by": node.node_id, "from": msg.sender, "body": body}).encode()

    node.on("app.echo", echo)
