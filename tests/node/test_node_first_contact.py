"""First-contact messages are a type of their own: only handlers that opted in get one.

A join-token peer (a newcomer with no certificate) connects over real ZeroMQ
with its token's CURVE key and sends a REQUEST signed by the key its own body
declares. The pipeline makes a :class:`FirstContactMessage` of it — never a
:class:`VerifiedMessage` — and the node hands it only to a handler registered
with ``first_contact=``. A handler registered for the same type without it
never sees one: the message is rejected (counted, audited, no reply).
"""

from __future__ import annotations

import asyncio
import itertools

from node_testlib import Fixture, build_node, run, wait_for, zmq_factory

from securemesh.crypto import NodeIdentity
from securemesh.messages import Ack
from securemesh.node import FirstContactMessage, VerifiedMessage
from securemesh.transport import CurveKeyPair, ZmqTransport
from securemesh.wire import Flags, decode, encode_signed

JOIN = "app.join"


def test_only_an_opted_in_handler_ever_sees_a_first_contact_message() -> None:
    async def main() -> None:
        fx = Fixture()
        edge = build_node(
            fx, fx.member("edge-1", "edge"), zmq_factory(), listen="tcp://127.0.0.1:0"
        )
        newcomer = NodeIdentity.generate()
        token_pair = CurveKeyPair.generate()
        edge.node.directory.admit_token_key(token_pair.public, fx.now + 600)
        opted: list[object] = []
        plain: list[object] = []

        def opted_in(msg: VerifiedMessage | FirstContactMessage) -> Ack:
            opted.append(msg)
            return Ack()

        def normal(msg: VerifiedMessage) -> Ack:
            plain.append(msg)  # must never run for a first contact
            return Ack()

        edge.node.on(JOIN, opted_in, first_contact=lambda body: newcomer.verify_key)
        await edge.node.start()
        client = ZmqTransport(token_pair)
        seq = itertools.count(1)
        try:
            assert edge.node.address is not None
            conn = await client.connect(edge.node.address, edge.node.certificate.curve_key)

            async def ask(cid: bytes) -> None:
                frames = encode_signed(
                    msg_type=JOIN, sender="dev-new", recipient="edge-1", sequence=next(seq),
                    timestamp_ms=int(fx.now * 1000), body=b"{}", signer=newcomer.signer,
                    flags=Flags.REQUEST, correlation_id=cid,
                )  # fmt: skip
                await conn.send(conn.server_key, [bytes(f) for f in frames], timeout=5)

            # 1. opted in: the handler gets a FirstContactMessage and its reply comes back
            await ask(b"a" * 16)
            _peer, frames = await conn.recv(timeout=10)
            reply = decode(frames)
            assert reply.flags is Flags.REPLY
            assert reply.correlation_id == b"a" * 16
            assert len(opted) == 1
            msg = opted[0]
            assert isinstance(msg, FirstContactMessage)
            assert not isinstance(msg, VerifiedMessage)
            assert msg.certificate is None
            assert msg.sender == "dev-new"

            # 2. the type registered again without first_contact: refused, never delivered
            edge.node.on(JOIN, normal)
            await ask(b"b" * 16)
            await wait_for(lambda: any(r.msg_type == JOIN for r in edge.rejections))
            refused = [r for r in edge.rejections if r.msg_type == JOIN]
            assert refused[-1].reason == "unauthorized"
            assert "first-contact" in refused[-1].detail
            assert plain == []
            assert len(opted) == 1
            with_reply = asyncio.ensure_future(conn.recv(timeout=0.5))
            try:
                await with_reply
                raise AssertionError("a refused first contact got a reply")
            except TimeoutError:
                pass  # reply or silence: silence
        finally:
            await client.close()
            await edge.node.stop(0)

    run(main())
