"""route.announce cannot steal a device's route; legitimate moves between edges still work.

Tree: cloud-1 ← edge-1, cloud-1 ← edge-2 (the rogue, when it misbehaves), and a
device dev-1 attached to one of them. Over the in-memory transport (the rules
live in MeshNode, not in the transport).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st
from node_testlib import Built, Fixture, Member, build_node, memory_factory, run, wait_for
from pydantic import BaseModel, ConfigDict

from securemesh.crypto import DelegatedAuthority, NodeIdentity
from securemesh.errors import AuthenticationError, DecodeError, RemoteCallError
from securemesh.messages import NODE_HELLO, ROUTE_ANNOUNCE, NodeHello, RouteAnnounce, b64e
from securemesh.node import VerifiedMessage
from securemesh.node._attach import (
    MAX_ATTACHMENT_SIZE,
    Attachment,
    sign_attachment,
    verify_attachment,
)


class Echo(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    text: str


@dataclasses.dataclass
class Mesh:
    fx: Fixture
    factory: object
    cloud: Built
    edge1: Built
    edge2: Built
    members: dict[str, Member]
    devices: list[Built]

    async def attach(self, edge: Built) -> Built:
        """Start (another instance of) dev-1 below ``edge``: same keys and certificate."""
        dev = build_node(
            self.fx,
            self.members["dev-1"],
            self.factory,
            parent=edge.node,  # type: ignore[arg-type]
        )

        def who(msg: VerifiedMessage) -> Echo:
            return Echo(text=f"dev-1 via {dev.node.parent_id}")

        dev.node.on("app.who", who)
        await dev.node.start()
        await dev.node.wait_parent(5)
        self.devices.append(dev)
        return dev

    def route_of(self, node_id: str) -> str | None:
        link = self.cloud.node._routes.get(node_id)
        return None if link is None else link.node_id


@asynccontextmanager
async def mesh() -> AsyncIterator[Mesh]:
    fx = Fixture()
    members = {
        "cloud-1": fx.member("cloud-1", "cloud"),
        "edge-1": fx.member("edge-1", "edge"),
        "edge-2": fx.member("edge-2", "edge"),
        "dev-1": fx.member("dev-1", "end"),
    }
    factory = memory_factory()
    known = [members["edge-1"], members["edge-2"]]
    cloud = build_node(fx, members["cloud-1"], factory, listen="memory://cloud", known=known)
    await cloud.node.start()
    edges = []
    for name in ("edge-1", "edge-2"):
        edge = build_node(
            fx,
            members[name],
            factory,
            listen=f"memory://{name}",
            parent=cloud.node,
            known=[members["dev-1"]],
        )
        await edge.node.start()
        await edge.node.wait_parent(5)
        edges.append(edge)
    m = Mesh(fx, factory, cloud, edges[0], edges[1], members, [])
    try:
        yield m
    finally:
        for b in [*m.devices, m.edge1, m.edge2, m.cloud]:
            await b.node.stop(0.2)


async def who(m: Mesh) -> str:
    reply = await m.cloud.node.request("dev-1", "app.who", Echo(text="?"), timeout=5)
    return reply.body(Echo).text


def reasons(b: Built) -> list[str]:
    return [r.reason for r in b.rejections]


def test_a_rogue_edge_cannot_steal_the_route_of_a_device_attached_elsewhere() -> None:
    async def main() -> None:
        async with mesh() as m:
            await m.attach(m.edge1)
            await wait_for(lambda: m.route_of("dev-1") == "edge-1")
            assert await who(m) == "dev-1 via edge-1"
            dev_cert = m.members["dev-1"].cert
            rogue = m.edge2.node
            # 1. the device's (public) certificate alone: no evidence, no route
            await rogue.send(
                "cloud-1", ROUTE_ANNOUNCE, RouteAnnounce(certificates=[b64e(dev_cert.to_bytes())])
            )
            await wait_for(lambda: len(m.cloud.rejections) == 1)
            # 2. a statement it signed itself for the device: does not verify
            forged = sign_attachment(
                m.members["edge-2"].identity.signer,
                "dev-1",
                m.members["edge-2"].identity.curve_public,
                sequence=2**62,
                timestamp_ms=0,
            )
            await rogue.send(
                "cloud-1",
                ROUTE_ANNOUNCE,
                RouteAnnounce(certificates=[b64e(dev_cert.to_bytes())], attachments=[b64e(forged)]),
            )
            await wait_for(lambda: len(m.cloud.rejections) == 2)
            # 3. the device's genuine statement naming its real edge (e.g. leaked): wrong parent
            genuine = sign_attachment(
                m.members["dev-1"].identity.signer,
                "dev-1",
                m.members["edge-1"].identity.curve_public,
                sequence=2**62,
                timestamp_ms=0,
            )
            await rogue.send(
                "cloud-1",
                ROUTE_ANNOUNCE,
                RouteAnnounce(
                    certificates=[b64e(dev_cert.to_bytes())], attachments=[b64e(genuine)]
                ),
            )
            await wait_for(lambda: len(m.cloud.rejections) == 3)
            assert reasons(m.cloud) == [
                "route_refused",
                AuthenticationError.reason,
                "route_refused",
            ]
            assert "no attachment statement" in m.cloud.rejections[0].detail
            assert "not attached below the announcing peer" in m.cloud.rejections[2].detail
            assert m.route_of("dev-1") == "edge-1"
            assert await who(m) == "dev-1 via edge-1"
            assert m.edge1.rejections == []

    run(main())


def test_a_device_moves_between_edges_and_the_old_edge_cannot_pull_it_back() -> None:
    async def main() -> None:
        async with mesh() as m:
            first = await m.attach(m.edge2)
            await wait_for(lambda: m.route_of("dev-1") == "edge-2")
            assert await who(m) == "dev-1 via edge-2"
            stale = m.edge2.node._routes.attachment("dev-1")  # what edge-2 keeps from then
            # the device moves to edge-1 (a legitimate move): its newer statement wins
            await first.node.stop(0.2)
            await m.attach(m.edge1)
            await wait_for(lambda: m.route_of("dev-1") == "edge-1")
            assert await who(m) == "dev-1 via edge-1"
            # edge-2, now rogue, re-announces the device with the statement it still holds
            cert = m.members["dev-1"].cert
            await m.edge2.node.send(
                "cloud-1",
                ROUTE_ANNOUNCE,
                RouteAnnounce(certificates=[b64e(cert.to_bytes())], attachments=[stale]),
            )
            await wait_for(lambda: "route_refused" in reasons(m.cloud))
            refused = [r for r in m.cloud.rejections if r.reason == "route_refused"]
            assert "fresher route evidence" in refused[-1].detail
            assert m.route_of("dev-1") == "edge-1"
            assert await who(m) == "dev-1 via edge-1"

    run(main())


def test_a_delegate_minted_certificate_in_an_announcement_is_refused_and_audited() -> None:
    """A rogue edge with an (unconstrained) delegated authority mints a certificate for
    dev-1 with keys it controls and announces it with a statement signed by those keys:
    key continuity refuses the certificate, so there is nothing to route."""

    async def main() -> None:
        async with mesh() as m:
            await m.attach(m.edge1)
            await wait_for(lambda: m.route_of("dev-1") == "edge-1")
            edge2 = m.members["edge-2"]
            grant = m.fx.authority.delegate(
                edge2.cert, lifetime_s=7200, now=m.fx.now, unconstrained=True
            )
            attacker = NodeIdentity.generate()
            minted = DelegatedAuthority(grant, edge2.identity.signer).issue(
                "dev-1", "end", [], attacker.public(), lifetime_s=7000, now=m.fx.now
            )
            statement = sign_attachment(
                attacker.signer,
                "dev-1",
                edge2.identity.curve_public,
                sequence=2**62,
                timestamp_ms=0,
            )
            await m.edge2.node.send(
                "cloud-1",
                ROUTE_ANNOUNCE,
                RouteAnnounce(
                    certificates=[b64e(minted.to_bytes())],
                    authorities=[b64e(grant.to_bytes())],
                    attachments=[b64e(statement)],
                ),
            )
            await wait_for(lambda: "key_continuity" in reasons(m.cloud))
            assert m.cloud.node.directory.refused_key_changes == 1
            assert m.cloud.node.status()["refused_key_changes"] == 1
            assert m.route_of("dev-1") == "edge-1"
            assert await who(m) == "dev-1 via edge-1"

    run(main())


def test_a_child_hello_with_a_statement_for_another_parent_is_rejected() -> None:
    """An edge keeps (and forwards) only statements its children signed naming it."""

    async def main() -> None:
        async with mesh() as m:
            dev = await m.attach(m.edge1)
            await wait_for(lambda: m.route_of("dev-1") == "edge-1")
            kept = m.edge1.node._routes.attachment("dev-1")
            wrong_parent = sign_attachment(
                m.members["dev-1"].identity.signer,
                "dev-1",
                m.members["edge-2"].identity.curve_public,
                sequence=2**62,
                timestamp_ms=0,
            )
            body = NodeHello(
                certificates=[b64e(m.members["dev-1"].cert.to_bytes())],
                attachment=b64e(wrong_parent),
            )
            link = dev.node._parent_link
            assert link is not None
            with pytest.raises(RemoteCallError):
                await dev.node._request_on(link, "", NODE_HELLO, body, timeout=5, expect=None)
            assert m.edge1.node._routes.attachment("dev-1") == kept
            refused = [r for r in m.edge1.rejections if r.msg_type == NODE_HELLO]
            assert [r.detail for r in refused] == ["attachment statement names another parent"]

    run(main())


def test_a_child_hello_without_an_attachment_statement_is_refused() -> None:
    """protocol.md §7.1 / §12 step 3: the statement is REQUIRED in a hello to the parent."""

    async def main() -> None:
        async with mesh() as m:
            dev = await m.attach(m.edge1)
            await wait_for(lambda: m.route_of("dev-1") == "edge-1")
            kept = m.edge1.node._routes.attachment("dev-1")
            link = dev.node._parent_link
            assert link is not None
            for body in (
                b'{"certificates":["%s"]}' % b64e(m.members["dev-1"].cert.to_bytes()).encode(),
                b'{"certificates":["%s"],"attachment":null}'
                % b64e(m.members["dev-1"].cert.to_bytes()).encode(),
            ):
                with pytest.raises(RemoteCallError) as info:
                    await dev.node._request_on(link, "", NODE_HELLO, body, timeout=5, expect=None)
                assert info.value.code == "malformed"
                assert info.value.detail.startswith("attachment: missing")
            assert m.edge1.node._routes.attachment("dev-1") == kept
            refused = [r for r in m.edge1.rejections if r.msg_type == NODE_HELLO]
            assert [r.reason for r in refused] == ["malformed", "malformed"]
            # the device's own hellos (with a statement) still work
            await dev.node._hello_parent()

    run(main())


# ------------------------------------------------------------- the statement itself


@given(
    node_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
    key=st.binary(min_size=32, max_size=32),
    sequence=st.integers(0, 2**64 - 1),
    timestamp=st.integers(0, 2**64 - 1),
)
def test_attachment_round_trip(node_id: str, key: bytes, sequence: int, timestamp: int) -> None:
    signer = _SIGNER
    blob = sign_attachment(signer, node_id, key, sequence=sequence, timestamp_ms=timestamp)
    assert len(blob) <= MAX_ATTACHMENT_SIZE
    got = verify_attachment(blob, signer.verify_key, node_id=node_id)
    assert got == Attachment(node_id, key, sequence, timestamp)


_SIGNER = NodeIdentity.generate().signer


def test_attachment_refusals() -> None:
    blob = sign_attachment(_SIGNER, "dev-1", bytes(32), sequence=5, timestamp_ms=6)
    with pytest.raises(AuthenticationError):
        verify_attachment(blob, NodeIdentity.generate().verify_key, node_id="dev-1")
    with pytest.raises(AuthenticationError, match="another node"):
        verify_attachment(blob, _SIGNER.verify_key, node_id="dev-2")
    for i in range(len(blob)):  # any flipped byte fails, one way or the other
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises((AuthenticationError, DecodeError)):
            verify_attachment(bytes(bad), _SIGNER.verify_key, node_id="dev-1")
    for bad in (b"", blob[:64], blob + b"\x00" * MAX_ATTACHMENT_SIZE, blob[:10] + blob[11:]):
        with pytest.raises((AuthenticationError, DecodeError)):
            verify_attachment(bad, _SIGNER.verify_key, node_id="dev-1")


def test_after_a_restart_the_parent_still_refuses_a_stale_statement() -> None:
    """Route evidence survives a restart (``route_evidence()`` → ``route_evidence_restore``)."""

    async def main() -> None:
        async with mesh() as m:
            first = await m.attach(m.edge2)
            await wait_for(lambda: m.route_of("dev-1") == "edge-2")
            stale = m.edge2.node._routes.attachment("dev-1")
            await first.node.stop(0.2)
            await m.attach(m.edge1)
            await wait_for(lambda: m.route_of("dev-1") == "edge-1")
            fresh = m.edge1.node._routes.attachment("dev-1")
            evidence = m.cloud.node.route_evidence()
            assert "dev-1" in evidence
            cert = m.members["dev-1"].cert

            async def restarted(restore: dict[str, int] | None, tag: str) -> Built:
                """The cloud again (same member, new process state), both edges below it."""
                edges = [m.members["edge-1"], m.members["edge-2"]]
                cloud = build_node(
                    m.fx,
                    m.members["cloud-1"],
                    m.factory,  # type: ignore[arg-type]
                    listen=f"memory://cloud-{tag}",
                    known=edges,
                    route_evidence_restore=restore,
                )
                await cloud.node.start()
                m.devices.append(cloud)
                return cloud

            async def announce(cloud: Built, edge: str, statement: str) -> Built:
                b = build_node(
                    m.fx,
                    m.members[edge],
                    m.factory,  # type: ignore[arg-type]
                    parent=cloud.node,
                    known=[m.members["dev-1"]],
                    listen=f"memory://{edge}-{cloud.node.address}",
                )
                await b.node.start()
                await b.node.wait_parent(5)
                m.devices.append(b)
                await b.node.send(
                    "cloud-1",
                    ROUTE_ANNOUNCE,
                    RouteAnnounce(certificates=[b64e(cert.to_bytes())], attachments=[statement]),
                )
                return b

            def route(cloud: Built) -> str | None:
                link = cloud.node._routes.get("dev-1")
                return None if link is None else link.node_id

            # without the saved evidence a restarted cloud would take the stale statement
            amnesiac = await restarted(None, "a")
            await announce(amnesiac, "edge-2", stale)
            await wait_for(lambda: route(amnesiac) == "edge-2")
            # with it, the stale statement is refused and the current one accepted
            cloud = await restarted(evidence, "b")
            await announce(cloud, "edge-2", stale)
            await wait_for(lambda: "route_refused" in reasons(cloud))
            assert route(cloud) is None
            await announce(cloud, "edge-1", fresh)
            await wait_for(lambda: route(cloud) == "edge-1")

    run(main())
