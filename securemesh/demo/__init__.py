"""``securemesh demo``: the whole system on this machine, end to end, in real processes.

:func:`run_demo` (:mod:`securemesh.demo._run` documents the steps) starts a
cloud node, three edge daemons and a dozen SDK devices, each device its own
process (:mod:`securemesh.demo._device`), and walks them through enrollment,
readings, routing, renewal, forgery and replay, sharded storage with an edge
killed and repaired, tasks placed by intent, an HE aggregation, secure-
aggregation FL rounds with a dropout, revocation and the audit log's proofs.

The daemons load the demo's services from ``node.toml``
(:mod:`securemesh.demo._services`): :func:`register_services`,
:func:`make_task_scheduler`, :func:`make_task_executor`.
"""

from __future__ import annotations

from securemesh.demo._run import DemoFailed, run_demo
from securemesh.demo._services import make_task_executor, make_task_scheduler, register_services

__all__ = [
    "DemoFailed",
    "make_task_executor",
    "make_task_scheduler",
    "register_services",
    "run_demo",
]
