"""``securemesh task``: submit a task from an enrolled device, verify a result, simulate policies.

* ``task submit TYPE --to NODE`` connects the device enrolled in ``--data-dir``
  to its edge, submits one task with its intent to the scheduling node ``NODE``
  and prints the executor's signed result (``-o json`` prints the whole
  :class:`~securemesh.tasks.SignedTaskResult`, to keep and verify later);
  ``--object NAME`` (repeat) with ``--index NODE`` (as for ``securemesh
  store``) runs it over the device's stored objects
  (:func:`securemesh.sdk.submit_over_objects`: placed first, each object's
  data key wrapped for the chosen executor only, which fetches and decrypts);
* ``task verify RESULT --cert CERT`` checks a kept result against the
  executor's certificate file (``node.cert``): ``OK`` or one ``error:`` line;
* ``task status ID --to NODE``, ``task list --to NODE``, ``task cancel ID
  --to NODE``: this device's submissions as the scheduler ``NODE`` knows them
  (state, node, attempts, times); cancel one still running (the executor
  stops it);
* ``task simulate`` runs every policy on one seeded workload (docs/tasks.md).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from securemesh.cli._common import (
    CliError,
    data_dir_options,
    format_options,
    iso_utc,
    os_error,
    passphrase_options,
    print_record,
    print_records,
    read_input_file,
    read_passphrase,
    resolve_data_dir,
)

__all__ = ["register"]

_MAX_FILE = 4 * 1024 * 1024


def _read(path: str, what: str) -> bytes:
    return read_input_file(path, what, _MAX_FILE)


def _submit(args: argparse.Namespace) -> int:
    from pydantic import ValidationError  # noqa: PLC0415

    from securemesh.sdk import Device  # noqa: PLC0415 - lazy
    from securemesh.tasks import TaskIntent, new_request  # noqa: PLC0415

    try:
        task_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise CliError(f"--args is not JSON: {exc.msg}") from None
    if not isinstance(task_args, dict):
        raise CliError("--args must be a JSON object")
    inline = [_read(p, "input") for p in args.input]
    try:
        intent = TaskIntent(
            deadline_s=args.deadline,
            budget=args.budget,
            privacy=args.privacy,
            energy_weight=args.energy_weight,
            carbon_weight=args.carbon_weight,
            cost_weight=args.cost_weight,
            locality_weight=args.locality_weight,
        )
        request, frames = new_request(
            args.type, task_args, intent=intent, work=args.work, inline=inline
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise CliError(f"invalid task request: {where}: {first['msg']}") from None
    _check_objects(args)
    data_dir = resolve_data_dir(args)
    passphrase = read_passphrase(args.passphrase_env, confirm=False)
    device = Device.connect(data_dir, passphrase=passphrase, connect_timeout=20)
    try:  # a task longer than the edge's reply window is detached and polled (docs/tasks.md)
        if args.object:
            handle = _submit_over_objects(args, device, data_dir, passphrase, request, frames)
        else:
            handle = device.submit(
                args.to, request.task_type, request.args, intent=intent, work=request.work,
                inline=[bytes(f) for f in frames],
            )  # fmt: skip
        result = handle.result(timeout=args.deadline + args.grace)
    except TimeoutError:
        raise CliError(
            f"no reply from {args.to} within {args.deadline + args.grace:g} s "
            "(refused by its policy, or unreachable)"
        ) from None
    finally:
        device.close(drain_timeout=1.0)
    if args.format == "table":
        o = result.outcome
        doc: dict[str, Any] = {
            "task": o.task_id,
            "type": o.task_type,
            "executor": o.executor,
            "ok": o.ok,
            "result": json.dumps(o.result, sort_keys=True),
            "ms": o.finished_ms - o.started_ms,
            "tried before": result.attempts,
        }
        print_record(doc, "table")
    else:
        print_record(json.loads(result.model_dump_json()), args.format)
    return 0


_OBJECT_NAME = re.compile(r"[A-Za-z0-9._/-]{1,255}")


def _check_objects(args: argparse.Namespace) -> None:
    """``--object`` needs ``--index``; names are object names, each once."""
    if args.object and not args.index:
        raise CliError("--object needs the index node (the cloud): name it with --index")
    if len(set(args.object)) != len(args.object):
        raise CliError("--object names an object twice")
    for name in args.object:
        if not _OBJECT_NAME.fullmatch(name):
            raise CliError(f"{name!r} is not an object name ([A-Za-z0-9._/-], up to 255)")
    if not (0 < args.timeout <= 3600):
        raise CliError("--timeout is in (0, 3600] seconds")


def _submit_over_objects(  # noqa: PLR0917
    args: argparse.Namespace,
    device: Any,
    data_dir: Path,
    passphrase: str,
    request: Any,
    frames: list[Any],
) -> Any:
    """``--object``: the task over the device's stored objects (placed, then shared)."""
    from securemesh.crypto.identity import NodeIdentity  # noqa: PLC0415 - lazy: start-up
    from securemesh.enroll import IDENTITY_FILE  # noqa: PLC0415
    from securemesh.sdk import storage_client, submit_over_objects  # noqa: PLC0415

    identity = NodeIdentity.load(data_dir / IDENTITY_FILE, passphrase)
    client = storage_client(device, identity, index=args.index, timeout=args.timeout)
    try:
        handle, _ = submit_over_objects(
            device, client, args.to, request.task_type, request.args, names=args.object,
            intent=request.intent, work=request.work, inline=[bytes(f) for f in frames],
        )  # fmt: skip
    except TimeoutError as exc:
        raise CliError(f"no answer in time: {exc}") from None
    return handle


def _ask(args: argparse.Namespace, msg_type: str, task_id: str | None) -> list[dict[str, Any]]:
    """One ``task.status`` / ``task.cancel`` request from the enrolled device; the rows."""
    from securemesh.errors import RemoteError  # noqa: PLC0415
    from securemesh.sdk import Device  # noqa: PLC0415 - lazy
    from securemesh.tasks import TaskQuery, TaskStates  # noqa: PLC0415

    if task_id is not None and not re.fullmatch(r"[0-9a-f]{32}", task_id):
        raise CliError(f"{task_id!r} is not a task id (32 lowercase hex digits)")
    passphrase = read_passphrase(args.passphrase_env, confirm=False)
    device = Device.connect(resolve_data_dir(args), passphrase=passphrase, connect_timeout=20)
    try:
        reply = device.request(args.to, msg_type, TaskQuery(task_id=task_id), timeout=args.timeout)
    except TimeoutError:
        raise CliError(
            f"no reply from {args.to} within {args.timeout:g} s "
            "(refused by its policy, or unreachable)"
        ) from None
    except RemoteError as exc:
        raise CliError(f"{args.to} refused: {exc}") from None
    finally:
        device.close(drain_timeout=1.0)
    states = TaskStates.model_validate_json(reply.body_bytes).tasks
    return [
        {
            "task": t.task_id,
            "type": t.task_type,
            "state": t.state,
            "node": t.node,
            "attempts": t.attempts,
            "submitted": iso_utc(t.submitted_ms / 1000),
            "updated": iso_utc(t.updated_ms / 1000),
            "error": t.error,
        }
        for t in states
    ]


def _status(args: argparse.Namespace) -> int:
    rows = _ask(args, "task.status", args.task_id)
    if not rows:
        raise CliError(f"{args.to} knows no task {args.task_id} of this device")
    print_record(rows[0], args.format)
    return 0


def _list(args: argparse.Namespace) -> int:
    print_records(_ask(args, "task.status", None), args.format)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    rows = _ask(args, "task.cancel", args.task_id)
    if not rows:
        raise CliError(f"{args.to} knows no task {args.task_id} of this device")
    if rows[0]["state"] != "cancelled":
        raise CliError(f"task {args.task_id} already ended: {rows[0]['state']}")
    print_record(rows[0], args.format)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pydantic import ValidationError  # noqa: PLC0415

    from securemesh.crypto.certs import SignedCertificate  # noqa: PLC0415
    from securemesh.tasks import SignedTaskResult, verify_result  # noqa: PLC0415

    try:
        result = SignedTaskResult.model_validate_json(_read(args.result, "result"))
    except ValidationError:
        raise CliError(f"{args.result} is not a signed task result") from None
    cert = SignedCertificate.from_bytes(_read(args.cert, "certificate")).unverified_certificate()
    outcome = verify_result(result, cert)
    state = "ok" if outcome.ok else f"failed ({outcome.error})"
    print(f"OK: task {outcome.task_id} {state}, signed by {outcome.executor}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from securemesh.tasks.sim import chart, compare  # noqa: PLC0415

    if not (1 <= args.tasks <= 100_000 and 1 <= args.devices <= 1000):
        raise CliError("--tasks is 1..100000 and --devices 1..1000")
    if not (0 <= args.edges <= 1000 and 0 <= args.clouds <= 100):
        raise CliError("--edges is 0..1000 and --clouds 0..100")
    if not (0 < args.rate <= 10_000 and 0.0 <= args.data <= 1.0):
        raise CliError("--rate is in (0, 10000] and --data in [0, 1]")
    results = compare(
        args.seed,
        tasks=args.tasks,
        devices=args.devices,
        edges=args.edges,
        clouds=args.clouds,
        rate=args.rate,
        data=args.data,
    )
    if args.chart:
        try:
            chart(results, args.chart, title=f"seed {args.seed}, {args.tasks} tasks")
        except OSError as exc:
            raise os_error(exc, "write") from exc
    print_records([r.row() for r in results], args.format)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``task`` and its subcommands."""
    task = subparsers.add_parser(
        "task",
        help="submit tasks with intent, follow or cancel them, verify results, simulate policies",
        description="Tasks across end, edge and cloud (docs/tasks.md).",
    )
    sub = task.add_subparsers(dest="task_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser(
        "submit",
        parents=[data_dir_options(), passphrase_options(), format_options()],
        help="submit one task from this enrolled device; print the signed result",
    )
    p.add_argument("type", help="the registered task type, e.g. demo.sum")
    p.add_argument("--to", required=True, metavar="NODE", help="the scheduling node (cloud)")
    p.add_argument("--args", default="{}", metavar="JSON", help="the arguments (a JSON object)")
    p.add_argument(
        "--input", action="append", default=[], metavar="FILE", help="an inline input (repeat)"
    )
    p.add_argument(
        "--object",
        action="append",
        default=[],
        metavar="NAME",
        help="a stored object of this device as an input (repeat; needs --index)",
    )
    p.add_argument("--index", metavar="NODE", help="the storage index node (the cloud)")
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="per storage request, with --object (default 30)",
    )
    p.add_argument("--deadline", type=float, default=10.0, metavar="S", help="seconds (10)")
    p.add_argument("--budget", type=float, default=None, help="maximum predicted cost")
    p.add_argument("--privacy", choices=("any", "edge-only", "device-only"), default="any")
    p.add_argument("--work", type=float, default=1.0, help="estimated work units (1)")
    for name in ("energy", "carbon", "cost", "locality"):
        p.add_argument(f"--{name}-weight", type=float, default=0.0, metavar="W")
    p.add_argument(
        "--grace", type=float, default=5.0, metavar="S", help="wait this long past the deadline"
    )
    p.set_defaults(func=_submit)

    for name, func, what in (
        ("status", _status, "one submission of this device, as the scheduler knows it"),
        ("list", _list, "this device's recent submissions (newest first)"),
        ("cancel", _cancel, "cancel a running submission of this device"),
    ):
        q = sub.add_parser(
            name, parents=[data_dir_options(), passphrase_options(), format_options()], help=what
        )
        if name != "list":
            q.add_argument("task_id", metavar="TASK_ID", help="the task id (32 hex digits)")
        q.add_argument("--to", required=True, metavar="NODE", help="the scheduling node (cloud)")
        q.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds (10)")
        q.set_defaults(func=func)

    v = sub.add_parser("verify", help="verify a kept result against its executor's certificate")
    v.add_argument("result", help="a result printed by `task submit -o json`")
    v.add_argument("--cert", required=True, help="the executor's certificate (node.cert)")
    v.set_defaults(func=_verify)

    s = sub.add_parser(
        "simulate", parents=[format_options()], help="compare placement policies (seeded)"
    )
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--tasks", type=int, default=400)
    s.add_argument("--devices", type=int, default=8)
    s.add_argument("--edges", type=int, default=3)
    s.add_argument("--clouds", type=int, default=1)
    s.add_argument(
        "--rate", type=float, default=40.0, help="arrivals per second per 8 devices (40)"
    )
    s.add_argument(
        "--data",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="share of interactive tasks with an input from the device (0.5)",
    )
    s.add_argument("--chart", metavar="PNG", help="also write a chart of the table to PNG")
    s.set_defaults(func=_simulate)
