"""Services the adversarial suite loads into its cloud and edge daemons (``services = [...]``)."""

from __future__ import annotations

import json

from securemesh.node import MeshNode, VerifiedMessage


def register(node: MeshNode) -> None:
    def echo(msg: VerifiedMessage) -> bytes:
        """``app.echo`` (request): who answered, who asked, and the body."""
        body = json.loads(msg.body_bytes)
        return json.dumps({"by": node.node_id, "from": msg.sender, "body": body}).encode()

    def sink(msg: VerifiedMessage) -> None:
        """``app.sink`` (one-way): accepted and dropped."""

    node.on("app.echo", echo)
    node.on("app.sink", sink)
