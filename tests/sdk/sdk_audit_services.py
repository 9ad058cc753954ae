"""The edge daemon's service for ``test_sdk_audit.py`` (loaded with ``services = [...]``).

``app.poke`` (request, from ``end`` devices): the edge sends the poking device
a one-way ``app.unwanted`` — a type the device never accepted, so the
device's own pipeline rejects it (``unauthorized``) — and then replies. The
one-way message goes out on the same link before the reply, so when the
device holds the reply its pipeline has already judged the message.
"""

from __future__ import annotations

from securemesh.node import MeshNode, VerifiedMessage
from securemesh.policy import AllowTypes

UNWANTED = "app.unwanted"


def register(node: MeshNode) -> None:
    async def poke(msg: VerifiedMessage) -> bytes:
        await node.send(msg.sender, UNWANTED, b'{"cmd":"wipe"}')
        return b"{}"

    node.on("app.poke", poke, policy=AllowTypes(types=["app.poke"], tiers=["end"]))
