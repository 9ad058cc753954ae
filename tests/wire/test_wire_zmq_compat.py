"""The envelope travels over real pyzmq sockets zero-copy (the transport layer's contract).

``securemesh.wire`` does not import zmq; this test shows that what it produces
goes into ``send_multipart(copy=False)`` as is, and that ``recv_multipart(copy=False)``
frames go into :func:`decode` as is.
"""

from __future__ import annotations

import pytest
from wire_testlib import BODY, MAC_KEY, SIGNER, Reading, maced, signed

from securemesh.wire import decode

zmq = pytest.importorskip("zmq")


@pytest.mark.parametrize("copy", [False, True])
def test_signed_and_mac_envelopes_over_a_socket_pair(copy: bool) -> None:
    ctx = zmq.Context()
    try:
        a = ctx.socket(zmq.PAIR)
        b = ctx.socket(zmq.PAIR)
        a.setsockopt(zmq.LINGER, 0)
        b.setsockopt(zmq.LINGER, 0)
        a.bind("inproc://wire-compat")
        b.connect("inproc://wire-compat")
        bulk = bytearray(range(256)) * 4096  # 1 MiB: above pyzmq's copy threshold
        a.send_multipart(signed(frames=(memoryview(bulk), b"small")), copy=copy)
        a.send_multipart(maced(frames=(memoryview(bulk),)), copy=copy)
        assert b.poll(5000)
        received = b.recv_multipart(copy=copy)  # zmq.Frame objects when copy=False
        env = decode(received).verify_signature(SIGNER.verify_key)
        assert env.body(Reading) == BODY
        assert bytes(env.raw_frames[0]) == bytes(bulk)
        # forwarding: the verified frames go straight back into a socket
        b.send_multipart(list(env.frames), copy=copy)
        assert a.poll(5000)
        back = a.recv_multipart()
        assert decode(back).verify_signature(SIGNER.verify_key).body(Reading) == BODY
        assert b.poll(5000)
        received = b.recv_multipart(copy=copy)
        frames = [f.buffer if not copy else f for f in received]  # or their memoryviews
        assert bytes(decode(frames).verify_mac(MAC_KEY).raw_frames[0]) == bytes(bulk)
        a.close()
        b.close()
    finally:
        ctx.term()
