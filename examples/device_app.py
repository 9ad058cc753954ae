"""A sensor device on SecureMesh: a loop sending readings to its edge.

Getting a device onto the mesh
------------------------------
1. On an edge that holds a delegated authority (enrolled with a ``--delegate``
   token), or on the cloud, create a one-time join token for an ``end`` device::

       securemesh token create --data-dir /var/lib/securemesh/edge-1 \\
           --tier end --roles sensor --ttl 1h

   It prints ``smj1.…`` (the only copy of its secret: hand it to the device
   over a trusted channel). The edge must be running (``securemesh node run
   --config examples/edge.toml``) and serve enrollment.
2. Enroll once (keys are generated on the device; the passphrase encrypts
   ``identity.key``)::

       export SECUREMESH_PASSPHRASE=...   # or a secret store of your choice
       python examples/device_app.py --data-dir ./sensor-7 \\
           --node-id edge-1.sensor-7 --token smj1.… [--kdf-memlimit-mib 16]

   (or, in code, ``Device.enroll(token, data_dir=..., node_id=...)``). An
   edge certifies only ids in its namespace -- by default its own id and a
   dot, ``edge-1.*`` (``token create`` prints it); a cloud token takes any id.
3. Run, as often as you like::

       python examples/device_app.py --data-dir ./sensor-7

The SDK renews the certificate at half its lifetime by itself. If the device
stayed offline past expiry, ``connect`` raises CertificateExpired: enroll
again with a fresh token and the same ``--data-dir`` (the keys are kept).

What it does: it asks its edge for the time (``sensor.time``), then every
``--interval`` seconds sends one ``sensor.reading`` (a dict body: sensor name,
sequence number, a simulated temperature, the 1-minute load average) to its
edge *as a request*, and prints what the edge acknowledged. It answers
``sensor.config`` requests from its edge or the cloud (``{"interval": 5.0}``
changes the period). The edge must run a service for these types and allow
them from tier ``end`` -- examples/sensor_service.py, loaded and allowed as
examples/edge.toml shows. A request the edge refuses (not allowed, no
handler) gets no reply: the app then prints one ``error:`` line and exits 1,
so "exit 0" means every reading was acknowledged. SIGINT/SIGTERM stop it
cleanly.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import signal
import sys
import threading
import time
from typing import Any

from securemesh.errors import SecureMeshError
from securemesh.sdk import Device, Message


class SensorApp:
    """The application's state; the handler runs on the SDK's handler thread."""

    def __init__(self, device: Device, sensor: str, interval: float) -> None:
        self.device = device
        self.sensor = sensor
        self._lock = threading.Lock()  # shared between the handler and the main loop
        self._interval = interval
        self.stop = threading.Event()

    @property
    def interval(self) -> float:
        with self._lock:
            return self._interval

    def on_config(self, msg: Message) -> dict[str, Any]:
        """``sensor.config`` request: ``{"interval": seconds}`` -> the applied settings."""
        body = msg.json()
        interval = body.get("interval")
        if not isinstance(interval, int | float) or not 0.01 <= interval <= 3600:
            raise ValueError("interval must be a number of seconds in 0.01..3600")
        with self._lock:
            self._interval = float(interval)
        return {"sensor": self.sensor, "interval": float(interval), "by": msg.sender}

    def reading(self, seq: int) -> dict[str, Any]:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return {
            "sensor": self.sensor,
            "seq": seq,
            "celsius": round(20.0 + 2.0 * math.sin(seq / 10.0), 3),
            "load_1m": round(load, 3),
            "ts": round(time.time(), 3),
        }

    def run(self, count: int, *, timeout: float) -> int:
        """Send readings as requests; print each acknowledgement. Returns the count sent."""
        dest = self.device.parent_id
        assert dest is not None  # connect() waited for the edge
        sent = 0
        while not self.stop.is_set() and (count <= 0 or sent < count):
            ack = self.device.request(dest, "sensor.reading", self.reading(sent), timeout=timeout)
            body = ack.json()
            print(
                f"acknowledged reading {body.get('ack')} of {body.get('sensor')} by {ack.sender} "
                f"({body.get('received')} received from this device)",
                flush=True,
            )
            sent += 1
            self.stop.wait(self.interval)
        return sent


def edge_time(device: Device, *, timeout: float) -> str:
    """Ask the edge for its clock (``sensor.time``); a line saying it and our offset."""
    dest = device.parent_id
    assert dest is not None
    reply = device.request(dest, "sensor.time", {}, timeout=timeout)
    edge_now = reply.json().get("time")
    if not isinstance(edge_now, int | float):
        raise ValueError(f"{reply.sender} answered sensor.time without a time")
    when = datetime.datetime.fromtimestamp(edge_now, datetime.UTC)
    return (
        f"time at {reply.sender}: {when.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}"
        f" (this device is {time.time() - edge_now:+.3f} s off)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SecureMesh sensor device example")
    parser.add_argument("--data-dir", required=True, help="the device's data directory")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    parser.add_argument("--count", type=int, default=0, help="stop after N readings (0: never)")
    parser.add_argument("--sensor", default="temp-0", help="sensor name in the readings")
    parser.add_argument("--token", help="enroll first with this join token (smj1.…)")
    parser.add_argument("--node-id", help="node id to enroll as (with --token)")
    parser.add_argument(
        "--kdf-memlimit-mib",
        type=int,
        help="Argon2id memory for the key file (default 128; small devices: e.g. 16)",
    )
    parser.add_argument(
        "--passphrase-env", default="SECUREMESH_PASSPHRASE", help="variable holding the passphrase"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the edge at connect, and for each acknowledgement",
    )
    args = parser.parse_args(argv)
    if args.token and not args.node_id:
        parser.error("--token needs --node-id")
    passphrase = os.environ.get(args.passphrase_env)
    if not passphrase:
        print(f"error: set {args.passphrase_env} (it encrypts the device key)", file=sys.stderr)
        return 2
    try:
        return _run(args, passphrase)
    except (SecureMeshError, TimeoutError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, passphrase: str) -> int:
    if args.token:
        kdf = None
        if args.kdf_memlimit_mib is not None:
            from securemesh.crypto.keystore import KdfParams  # noqa: PLC0415 - only when asked

            kdf = KdfParams(opslimit=3, memlimit=args.kdf_memlimit_mib * 1024 * 1024)
        info = Device.enroll(
            args.token,
            data_dir=args.data_dir,
            node_id=args.node_id,
            passphrase=passphrase,
            kdf_params=kdf,
        )
        print(f"enrolled {info.node_id} (serial {info.serial}, by {info.issuer})", file=sys.stderr)

    with Device.connect(
        args.data_dir, passphrase=passphrase, connect_timeout=args.timeout
    ) as device:
        app = SensorApp(device, args.sensor, args.interval)
        device.on("sensor.config", app.on_config)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: app.stop.set())
        print(f"{device.node_id} connected to {device.parent_id}", file=sys.stderr)
        print(edge_time(device, timeout=args.timeout), flush=True)
        sent = app.run(args.count, timeout=args.timeout)
    print(f"sent {sent} readings, all acknowledged", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
