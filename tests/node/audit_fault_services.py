"""A daemon service for the audit fault test: records a stream of audit events.

``register(node)`` starts a task that records ``$AUDIT_FAULT_EVENTS`` events
(kind ``task.submitted``, subject ``task:<node>-<i>``) through the daemon's
:class:`~securemesh.node._audit_bus.AuditRecorder`, one every
``$AUDIT_FAULT_INTERVAL`` seconds — the same path the daemon's own events take
(signed, durable in the outbox, shipped over the bus).
"""

from __future__ import annotations

import asyncio
import os

from securemesh.node import MeshNode
from securemesh.node._audit_bus import audit_recorder

_TASKS: set[asyncio.Task[None]] = set()


def register(node: MeshNode) -> None:
    count = int(os.environ.get("AUDIT_FAULT_EVENTS", "0"))
    interval = float(os.environ.get("AUDIT_FAULT_INTERVAL", "0.005"))
    recorder = audit_recorder(node)
    assert recorder is not None, "the daemon attaches its recorder before loading services"

    async def emit() -> None:
        for i in range(count):
            recorder.record("task.submitted", ("task", f"{node.node_id}-{i}"), details={"seq": i})
            await asyncio.sleep(interval)

    task = asyncio.get_running_loop().create_task(emit())
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
