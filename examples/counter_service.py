"""A small SecureMesh service: a counter with its own loop, audit kind, status and policy.

Load it on a node daemon with ``node.toml`` (the directory holding this file
on ``PYTHONPATH``)::

    services = ["counter_service:make"]

    [[policy.allow]]              # the operator's rule: devices may use counter.*
    types = ["counter.*"]
    tiers = ["end"]

What it shows (the guide is docs/services.md):

* **its own loop**: :meth:`CounterService.start` spawns ``tick`` with
  ``ctx.spawn``; the node cancels it when the service stops (no task leaks);
* **its own audit kind**: every tick records a ``counter.tick`` event through
  ``ctx.audit`` (declared in ``audit_kinds``; never blocks the loop), shipped to
  the cloud log, where ``securemesh audit query --kind counter.tick`` finds it;
* **a status entry**: ``securemesh node status`` shows ``services.counter``;
* **a policy**: ``counter.get`` may come from ``end`` devices -- but only if the
  operator's ``[policy]`` allows it too (a service narrows, never widens);
* **its own data directory**: the count survives a restart
  (``<data_dir>/services/counter/count``).

``COUNTER_INTERVAL`` (seconds, default 5) sets the tick interval.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping

from securemesh.node import NodeContext, Service, VerifiedMessage
from securemesh.policy import AllowTypes

MSG_GET = "counter.get"
KIND_TICK = "counter.tick"


class CounterService(Service):
    """Counts ticks; answers ``counter.get`` with the count."""

    name = "counter"
    audit_kinds = (KIND_TICK,)

    def __init__(self, interval: float = 5.0) -> None:
        if not 0.01 <= interval <= 86_400:
            raise ValueError("the counter interval is between 0.01 and 86400 seconds")
        self.interval = interval
        self.count = 0
        self.audited = 0
        self.loop_cancelled = False
        self._ctx: NodeContext | None = None

    @property
    def ctx(self) -> NodeContext:
        if self._ctx is None:
            raise RuntimeError("the counter service is not installed")
        return self._ctx

    # ------------------------------------------------------------------ seam

    def install(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        # Devices may ask; the operator's [policy] must allow it too.
        ctx.on(MSG_GET, self._get, policy=AllowTypes(types=[MSG_GET], tiers=["end"]))
        path = ctx.data_dir / "count"
        if path.exists():
            self.count = int(json.loads(path.read_text())["count"])

    async def start(self) -> None:
        self.ctx.spawn(self._tick(), name="tick")

    async def stop(self) -> None:
        # Our tasks are cancelled by the node after this returns; just save the state.
        (self.ctx.data_dir / "count").write_text(json.dumps({"count": self.count}))

    def status(self) -> Mapping[str, object]:
        return {
            "count": self.count,
            "audited": self.audited,
            "interval": self.interval,
            "loop_cancelled": self.loop_cancelled,
        }

    # ------------------------------------------------------------ behaviour

    def _get(self, msg: VerifiedMessage) -> bytes:
        return json.dumps({"count": self.count, "by": self.ctx.node_id}).encode()

    async def _tick(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                self.count += 1
                event_id = self.ctx.audit.record(
                    KIND_TICK, ("node", self.ctx.node_id), details={"count": self.count}
                )
                if event_id is not None:
                    self.audited += 1
        except asyncio.CancelledError:
            self.loop_cancelled = True
            raise


def make() -> CounterService:
    """The factory ``node.toml`` names (``services = ["counter_service:make"]``)."""
    return CounterService(interval=float(os.environ.get("COUNTER_INTERVAL", "5")))
