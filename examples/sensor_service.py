"""An edge service for examples/device_app.py: it receives readings and tells the time.

Loading it into an edge daemon
------------------------------
The daemon imports the ``services`` entries of its ``node.toml`` by module
name and calls ``register(node)`` before it starts, so put this directory on
the daemon's ``PYTHONPATH`` and name the function (examples/edge.toml does)::

    services = ["sensor_service:register"]

    # Deny by default: without this rule the edge refuses (and audits) every
    # reading as `unauthorized`, and a refused request gets no reply.
    [[policy.allow]]
    types = ["sensor.reading", "sensor.time"]
    tiers = ["end"]
    roles = ["sensor"]          # tokens made with `token create --roles sensor`

    PYTHONPATH=examples securemesh node run --config /var/lib/securemesh/edge-1/node.toml

What it answers
---------------
* ``sensor.reading`` — a reading from a device (``{"sensor", "seq", "celsius",
  "load_1m", "ts"}``, parsed strictly; anything else is refused with
  ``mesh.error``). Sent as a request it is acknowledged with ``{"ack": seq,
  "sensor", "received", "by"}``, ``received`` counting this device's readings
  since the edge started; sent one-way it is just recorded.
* ``sensor.time`` — a request; the reply is ``{"time": <edge clock, Unix
  seconds>, "by": <edge id>}``, so a device can check its clock against the edge's.

State is bounded: the latest reading and a count per device, for at most
``max_devices`` devices (the least recently heard is forgotten first).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from securemesh.messages import MeshMessage
from securemesh.node import MeshNode, VerifiedMessage

__all__ = ["Reading", "ReadingAck", "SensorService", "TimeReply", "register"]

log = logging.getLogger("securemesh.example.sensor")


class Reading(MeshMessage):
    """What examples/device_app.py sends (strict: no extra keys, no coercion)."""

    sensor: Annotated[str, Field(min_length=1, max_length=64)]
    seq: Annotated[int, Field(ge=0, lt=2**63)]
    celsius: Annotated[float, Field(ge=-273.15, le=10_000.0)]
    load_1m: Annotated[float, Field(ge=0.0, le=1e6)]
    ts: Annotated[float, Field(ge=0.0)]


class ReadingAck(MeshMessage):
    ack: int
    sensor: str
    received: int
    by: str


class TimeReply(MeshMessage):
    time: float
    by: str


@dataclass
class _Seen:
    latest: Reading
    received: int


class SensorService:
    """Readings per device (bounded) and the edge's clock; ``install(node)`` adds the handlers."""

    def __init__(
        self, *, max_devices: int = 10_000, clock: Callable[[], float] = time.time
    ) -> None:
        if max_devices < 1:
            raise ValueError("max_devices must be at least 1")
        self.max_devices = max_devices
        self.clock = clock
        self.node_id = ""
        self._seen: OrderedDict[str, _Seen] = OrderedDict()

    def install(self, node: MeshNode) -> None:
        self.node_id = node.node_id
        node.on("sensor.reading", self.on_reading)
        node.on("sensor.time", self.on_time)

    def received(self, device: str) -> int:
        """Readings received from ``device`` (0 if unknown or forgotten)."""
        seen = self._seen.get(device)
        return 0 if seen is None else seen.received

    def latest(self, device: str) -> Reading | None:
        seen = self._seen.get(device)
        return None if seen is None else seen.latest

    def record(self, device: str, reading: Reading) -> int:
        """Keep ``reading`` as ``device``'s latest; return how many it sent (bounded state)."""
        seen = self._seen.pop(device, None)
        count = 1 if seen is None else seen.received + 1
        self._seen[device] = _Seen(reading, count)
        while len(self._seen) > self.max_devices:
            self._seen.popitem(last=False)  # the least recently heard
        return count

    def on_reading(self, msg: VerifiedMessage) -> ReadingAck:
        reading = msg.body(Reading)
        count = self.record(msg.sender, reading)
        log.info(
            "reading",
            extra={
                "event": "sensor_reading",
                "device": msg.sender,
                "sensor": reading.sensor,
                "seq": reading.seq,
                "celsius": reading.celsius,
            },
        )
        # The reply is sent only if the reading came as a request.
        return ReadingAck(ack=reading.seq, sensor=reading.sensor, received=count, by=self.node_id)

    def on_time(self, msg: VerifiedMessage) -> TimeReply:
        return TimeReply(time=self.clock(), by=self.node_id)


def register(node: MeshNode) -> None:
    """The ``services`` entry point: ``services = ["sensor_service:register"]``."""
    SensorService().install(node)
