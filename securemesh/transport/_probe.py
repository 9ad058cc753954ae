"""Why does the edge not answer? Ask its CURVE handshake (ZAP) once, on a separate socket.

:func:`curve_admission` connects one plain pyzmq DEALER with the device's own
CURVE key pair to the edge and watches the socket monitor (ZMTP 3 / RFC 26:
a ZAP refusal ends the handshake with ``ERROR``, which libzmq reports as
``EVENT_HANDSHAKE_FAILED_AUTH``). It sends nothing. The edge admits a key only
while a valid, unrevoked certificate names it (docs/node.md, Admission), so a
refusal of an enrolled device's key means the edge revoked it (or no longer
holds a valid certificate for it). ``Device.connect`` asks only after its wait
for the edge's hello has already failed, so the probe cannot disturb a working
connection.
"""

from __future__ import annotations

import time
from typing import Literal

__all__ = ["Admission", "curve_admission"]

Admission = Literal["refused", "admitted", "silent"]


def curve_admission(
    endpoint: str, server_key: bytes, public: bytes, secret: bytes, *, timeout: float
) -> Admission:
    """``refused`` (ZAP said no), ``admitted`` (handshake done) or ``silent`` (no answer)."""
    import zmq  # noqa: PLC0415 - loaded by connect() already
    from zmq.utils.monitor import recv_monitor_message  # noqa: PLC0415

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    monitor = sock.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED
    )
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_serverkey = server_key
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not monitor.poll(max(1, int(remaining * 1000))):
                break
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                return "refused"
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return "admitted"
        return "silent"
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()
