"""``securemesh.sdk``: the Device SDK — a small API for firmware apps on the mesh.

::

    from securemesh.sdk import Device

    Device.enroll(token, data_dir="/var/lib/sensor", node_id="sensor-7", passphrase=pw)
    with Device.connect("/var/lib/sensor", passphrase=pw) as dev:
        dev.on("sensor.config", lambda msg: apply(msg.json()))
        dev.send(dev.parent_id, "sensor.reading", {"celsius": 21.5})
        reply = dev.request(dev.parent_id, "sensor.time", {}, timeout=5)

* :class:`Device` — synchronous; runs the asyncio loop, the
  :class:`~securemesh.node.MeshNode` (tier ``end``, a CurveZMQ DEALER to its
  edge) and certificate renewal in background threads
  (:mod:`securemesh.sdk._device` documents the threads and handler safety).
* :class:`AsyncDevice` — the same as coroutines, for asyncio applications
  (:mod:`securemesh.sdk._async`: renewal, revocation, expiry).
* :class:`Message` — what handlers and ``request`` return: a read-only view
  of a *verified* message; :class:`Reply` — a handler's reply with raw frames;
  bodies are pydantic models, dicts or JSON bytes (:mod:`securemesh.sdk._message`).
* :class:`Enrollment` — what :meth:`Device.enroll` reports.
* :class:`TaskHandle` — what :meth:`Device.submit` returns: a task submitted
  with its intent, and its signed result (docs/tasks.md).
* :func:`storage_client` / :class:`DeviceRequester` — encrypted edge storage
  (docs/storage.md) from a device (:mod:`securemesh.sdk._storage`).
* :func:`he_contribute` / :func:`he_key_owner` — homomorphic encryption jobs
  (docs/he.md) from a device (:mod:`securemesh.sdk._he`; TenSEAL loads only
  when one is called).

Importing this package is deliberately cheap (it is checked by a test and
``bench/sdk_footprint.py``): it loads no pydantic, cryptography, pyzmq,
SQLAlchemy, numpy, TenSEAL or CLI code. Those load when a device enrolls or
connects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securemesh.sdk._device import Device, TaskHandle
from securemesh.sdk._files import Enrollment
from securemesh.sdk._message import Message, Reply

if TYPE_CHECKING:
    from securemesh.sdk._async import AsyncDevice
    from securemesh.sdk._he import he_contribute, he_key_owner
    from securemesh.sdk._storage import DeviceRequester, storage_client

__all__ = [
    "AsyncDevice",
    "Device",
    "DeviceRequester",
    "Enrollment",
    "Message",
    "Reply",
    "TaskHandle",
    "he_contribute",
    "he_key_owner",
    "storage_client",
]


def __getattr__(name: str) -> object:
    if name == "AsyncDevice":
        from securemesh.sdk._async import AsyncDevice  # noqa: PLC0415 - imports asyncio

        return AsyncDevice
    if name in {"DeviceRequester", "storage_client"}:
        from securemesh.sdk import _storage  # noqa: PLC0415 - loads pydantic and storage

        return getattr(_storage, name)
    if name in {"he_contribute", "he_key_owner"}:
        from securemesh.sdk import _he  # noqa: PLC0415 - loads pydantic; TenSEAL when called

        return getattr(_he, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
