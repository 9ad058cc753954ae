"""``securemesh fl``: start federated rounds and read their progress, as an enrolled device.

* ``fl run --to NODE`` connects the device enrolled in ``--data-dir`` to its
  edge and asks the FL coordinator on ``NODE`` (the ``fl`` service) to run
  ``--rounds`` rounds of secure aggregation (``--mode secagg``, or ``--mode he
  --aggregator NODE``: CKKS through securemesh.he's service on NODE) over the
  devices that joined,
  from the initial parameters in ``--init`` (a raw little-endian float64
  file) or ``--zeros N``; ``--wait`` waits until they are done;
  ``--dp-clip C --noise-multiplier Z`` add client-level DP (each device clips
  its update to L2 norm C and adds its share of the Gaussian noise; ``fl
  status`` reports epsilon for ``--delta``);
* ``fl status --to NODE`` prints the coordinator's state and its last round.

See docs/federated-learning.md.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from securemesh.cli._common import (
    CliError,
    data_dir_options,
    format_options,
    os_error,
    passphrase_options,
    print_record,
    read_passphrase,
    resolve_data_dir,
)

__all__ = ["register"]

_MAX_INIT = 64 * 1024 * 1024


def _initial(args: argparse.Namespace) -> bytes:
    if (args.init is None) == (args.zeros is None):
        raise CliError("give exactly one of --init FILE and --zeros N")
    if args.zeros is not None:
        if not 1 <= args.zeros <= _MAX_INIT // 8:
            raise CliError(f"--zeros is 1..{_MAX_INIT // 8}")
        return bytes(8 * args.zeros)
    try:
        with open(args.init, "rb") as f:
            data = f.read(_MAX_INIT + 1)
    except OSError as exc:
        raise os_error(exc, "read") from exc
    if not data or len(data) % 8 or len(data) > _MAX_INIT:
        raise CliError(
            f"{args.init} is not a raw float64 vector (a multiple of 8 bytes, <= 64 MiB)"
        )
    return data


def _flat(status: dict[str, Any]) -> dict[str, Any]:
    last = status.get("last") or {}
    return {
        "joined": status.get("joined"),
        "running": status.get("running"),
        "rounds": status.get("rounds"),
        "stage": status.get("stage"),
        "last round": last.get("round"),
        "last survivors": len(last.get("survivors", [])) if "survivors" in last else None,
        "last aborted": last.get("aborted"),
        "mode": last.get("mode"),
        "model hash": last.get("model_hash"),
        "epsilon": status.get("epsilon"),
        "delta": status.get("delta"),
    }


def _connect(args: argparse.Namespace) -> Any:
    from securemesh.sdk import Device  # noqa: PLC0415 - lazy

    passphrase = read_passphrase(args.passphrase_env, confirm=False)
    return Device.connect(resolve_data_dir(args), passphrase=passphrase, connect_timeout=20)


def _request(
    device: Any, args: argparse.Namespace, msg_type: str, body: object, frames: list[bytes]
) -> dict[str, Any]:
    from securemesh.errors import RemoteCallError  # noqa: PLC0415

    try:
        reply = device.request(args.to, msg_type, body, frames, timeout=args.timeout)
    except TimeoutError:
        raise CliError(
            f"no reply from {args.to} within {args.timeout:g} s "
            "(no fl service there, refused by its policy, or unreachable)"
        ) from None
    except RemoteCallError as exc:
        raise CliError(f"{args.to} refused: {exc}") from None
    value = json.loads(reply.body_bytes)
    if not isinstance(value, dict):
        raise CliError(f"{args.to} sent an unexpected reply")
    return value


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError  # noqa: PLC0415

    from securemesh.fl import MSG_RUN, MSG_STATUS, RunBody  # noqa: PLC0415 - lazy

    init = _initial(args)
    try:
        body = RunBody(
            rounds=args.rounds,
            clients_per_round=args.clients_per_round,
            clip=args.clip,
            stage_timeout=args.stage_timeout,
            dp_clip=args.dp_clip,
            noise_multiplier=args.noise_multiplier,
            delta=args.delta,
            mode=args.mode,
            aggregator=args.aggregator,
            preset=args.preset,
            max_weight=args.max_weight,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise CliError(f"invalid run: {where + ': ' if where else ''}{first['msg']}") from None
    device = _connect(args)
    try:
        started = _request(device, args, MSG_RUN, body, [init])
        record: dict[str, Any] = {"started": started.get("started"), "rounds": args.rounds}
        if args.wait:
            deadline = time.monotonic() + args.wait
            while True:
                status = _request(device, args, MSG_STATUS, {}, [])
                if not status.get("running"):
                    break
                if time.monotonic() > deadline:
                    raise CliError(f"the rounds did not finish within {args.wait:g} s")
                time.sleep(0.5)
            record = {"started": True, **_flat(status)}
    finally:
        device.close(drain_timeout=1.0)
    print_record(record, args.format)
    return 0


def _status(args: argparse.Namespace) -> int:
    from securemesh.fl import MSG_STATUS  # noqa: PLC0415 - lazy

    device = _connect(args)
    try:
        status = _request(device, args, MSG_STATUS, {}, [])
    finally:
        device.close(drain_timeout=1.0)
    print_record(_flat(status) if args.format == "table" else status, args.format)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fl`` and its subcommands."""
    fl = subparsers.add_parser(
        "fl",
        help="start secure-aggregation FL rounds and read their progress (as an enrolled device)",
        description="Federated learning with secure aggregation (docs/federated-learning.md).",
    )
    sub = fl.add_subparsers(dest="fl_command", metavar="SUBCOMMAND", required=True)
    common = [data_dir_options(), passphrase_options(), format_options()]

    r = sub.add_parser("run", parents=common, help="run rounds over the devices that joined")
    r.add_argument("--to", required=True, metavar="NODE", help="the node running the fl service")
    r.add_argument("--rounds", type=int, default=1, help="number of rounds (1)")
    r.add_argument("--clients-per-round", type=int, required=True, metavar="N")
    r.add_argument("--init", metavar="FILE", help="initial parameters: raw little-endian float64")
    r.add_argument("--zeros", type=int, metavar="N", help="initial parameters: N zeros")
    r.add_argument("--clip", type=float, default=1.0, help="quantizer clipping bound (1.0)")
    r.add_argument("--stage-timeout", type=float, default=10.0, metavar="S", help="seconds (10)")
    r.add_argument(
        "--mode", choices=["secagg", "he"], default="secagg", help="aggregation mode (secagg)"
    )
    r.add_argument(
        "--aggregator", metavar="NODE", help="he mode: the node running securemesh.he's service"
    )
    r.add_argument("--preset", default="standard-8192", help="he mode: CKKS preset (standard-8192)")
    r.add_argument(
        "--max-weight", type=int, default=1000, metavar="N", help="he mode: sample cap (1000)"
    )
    r.add_argument(
        "--dp-clip", type=float, metavar="C", help="client-level DP: L2 clip of each update"
    )
    r.add_argument(
        "--noise-multiplier", type=float, metavar="Z", help="client-level DP: noise std / C"
    )
    r.add_argument("--delta", type=float, default=1e-5, help="DP delta for epsilon (1e-5)")
    r.add_argument(
        "--wait", type=float, default=0.0, metavar="S", help="wait up to S s for the end"
    )
    r.add_argument("--timeout", type=float, default=20.0, metavar="S", help="per request (20)")
    r.set_defaults(func=_run)

    s = sub.add_parser("status", parents=common, help="the coordinator's state and last round")
    s.add_argument("--to", required=True, metavar="NODE", help="the node running the fl service")
    s.add_argument("--timeout", type=float, default=20.0, metavar="S", help="per request (20)")
    s.set_defaults(func=_status)
