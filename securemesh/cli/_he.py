"""``securemesh he``: homomorphic-encryption jobs from an enrolled device (docs/he.md).

* ``he presets`` lists the CKKS parameter presets with their security bound;
* ``he inspect FILE --preset NAME`` checks a serialized public context (e.g.
  one an aggregator kept in ``services/he/jobs/``): whether it holds a secret
  key, Galois keys, and the preset's parameters;
* ``he run --aggregator NODE --op mean --length L --contributors N`` (as a
  device with the ``he-keyholder`` role) creates a job, prints its id on
  standard error at once, waits, decrypts and prints the result;
* ``he contribute --aggregator NODE --job ID --values 1,2,3`` (or
  ``--values-file FILE.json``) encrypts and sends this device's vector.

Every refusal (a job past its deadline, a malformed value, an aggregator's
``mesh.error``) is one ``error:`` line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from securemesh.cli._common import (
    CliError,
    data_dir_options,
    format_options,
    iso_utc,
    passphrase_options,
    print_record,
    print_records,
    read_input_file,
    read_passphrase,
    resolve_data_dir,
)

__all__ = ["register"]

_MAX_FILE = 64 * 1024 * 1024


def _read(path: str, what: str) -> bytes:
    return read_input_file(path, what, _MAX_FILE)


def _presets(args: argparse.Namespace) -> int:
    from securemesh.he import HE_STANDARD_128, PRESETS  # noqa: PLC0415

    rows: list[dict[str, Any]] = [
        {
            "name": p.name,
            "poly_modulus_degree": p.poly_modulus_degree,
            "coeff_mod_bits": list(p.coeff_mod_bit_sizes),
            "total_bits": p.total_bits,
            "max_bits_128": HE_STANDARD_128[p.poly_modulus_degree],
            "scale_bits": p.scale_bits,
            "slots": p.slots,
            "levels": p.levels,
            "error_per_contribution": p.error_bound(1) / 2,
        }
        for p in PRESETS.values()
    ]
    if args.format == "table":
        for row in rows:
            row["coeff_mod_bits"] = ",".join(map(str, row["coeff_mod_bits"]))
            row["error_per_contribution"] = f"{row['error_per_contribution']:.1e}"
    print_records(rows, args.format)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from securemesh.errors import RemoteError  # noqa: PLC0415
    from securemesh.he import context_has_secret_key, get_preset, load_public_context  # noqa: PLC0415

    blob = _read(args.file, "context")
    preset = get_preset(args.preset)
    doc: dict[str, Any] = {"file": args.file, "bytes": len(blob), "preset": preset.name}
    try:
        doc["secret_key"] = context_has_secret_key(blob)
        public = load_public_context(blob, preset)
    except RemoteError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    doc.update(
        {"secret_key": False, "galois_keys": public.has_galois_keys, "sha256": public.digest}
    )
    print_record(doc, args.format)
    return 0


def _connect(args: argparse.Namespace) -> Any:
    from securemesh.sdk import Device  # noqa: PLC0415 - lazy

    passphrase = read_passphrase(args.passphrase_env, confirm=False)
    return Device.connect(resolve_data_dir(args), passphrase=passphrase, connect_timeout=30)


def _run(args: argparse.Namespace) -> int:
    from securemesh.sdk import he_key_owner  # noqa: PLC0415 - lazy: TenSEAL

    if not (1 <= args.length <= 1 << 22 and 2 <= args.contributors <= 10_000):
        raise CliError("--length is 1..4194304 and --contributors 2..10000")
    if not 1 <= args.timeout <= 86_400:
        raise CliError("--timeout is 1..86400 seconds")
    device = _connect(args)
    try:
        owner = he_key_owner(device, args.aggregator)
        job = asyncio.run(
            owner.create_job(
                args.op,
                length=args.length,
                max_contributors=args.contributors,
                min_contributors=min(args.min_contributors, args.contributors),
                timeout=args.timeout,
                preset=args.preset,
                max_abs_value=args.max_abs_value,
            )
        )
        print(f"job {job.id}", file=sys.stderr, flush=True)
        result = asyncio.run(owner.result(job, wait=args.timeout + 30))
    except TimeoutError:
        raise CliError(f"no reply from {args.aggregator} (refused by its policy?)") from None
    finally:
        device.close(drain_timeout=1.0)
    doc: dict[str, Any] = {
        "job": result.job_id,
        "op": result.op,
        "finished": iso_utc(time.time()),
        "count": result.count,
        "contributors": result.contributors,
        "rejected": result.rejected,
        "dropped": result.dropped,
        "error_bound": result.error_bound,
        "mean": [round(float(v), 9) for v in result.mean],
    }
    if result.op != "mean":
        doc["total"] = [round(float(v), 9) for v in result.total]
    if result.variance is not None:
        doc["variance"] = [round(float(v), 9) for v in result.variance]
    if args.format == "table":
        for key in ("contributors", "dropped", "mean", "total", "variance"):
            if key in doc:
                doc[key] = ",".join(str(v) for v in doc[key])
        doc["rejected"] = ",".join(f"{k}:{v}" for k, v in sorted(result.rejected.items()))
    print_record(doc, args.format)
    return 0


def _values(args: argparse.Namespace) -> list[float]:
    if (args.values is None) == (args.values_file is None):
        raise CliError("give exactly one of --values and --values-file")
    try:
        if args.values is not None:
            values = [float(v) for v in args.values.split(",") if v.strip()]
        else:
            loaded = json.loads(_read(args.values_file, "values file"))
            if not isinstance(loaded, list):
                raise CliError(f"{args.values_file} holds a JSON array of numbers")
            values = [float(v) for v in loaded]
    except (ValueError, TypeError) as exc:
        raise CliError(f"the values are numbers: {exc}") from None
    if not values:
        raise CliError("no values")
    return values


def _contribute(args: argparse.Namespace) -> int:
    from securemesh.errors import LocalError, RemoteCallError  # noqa: PLC0415
    from securemesh.sdk import he_contribute  # noqa: PLC0415 - lazy: TenSEAL

    values = _values(args)
    device = _connect(args)
    try:
        accepted = he_contribute(device, args.aggregator, args.job, values, weight=args.weight)
    except RemoteCallError as exc:
        detail = f": {exc.detail}" if exc.detail else ""
        raise CliError(f"{args.aggregator} refused the contribution ({exc.code}){detail}") from None
    except LocalError as exc:
        raise CliError(str(exc)) from None
    except TimeoutError:
        raise CliError(f"no reply from {args.aggregator} (refused by its policy?)") from None
    finally:
        device.close(drain_timeout=1.0)
    print_record(
        {"job": args.job, "values": len(values), "ciphertexts": accepted.received}, args.format
    )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``he`` and its subcommands."""
    he = subparsers.add_parser(
        "he",
        help="homomorphic-encryption jobs: aggregate encrypted vectors (CKKS)",
        description="Encrypted sums, means and statistics across devices (docs/he.md).",
    )
    sub = he.add_subparsers(dest="he_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("presets", parents=[format_options()], help="list the CKKS presets")
    p.set_defaults(func=_presets)

    i = sub.add_parser(
        "inspect", parents=[format_options()], help="check a serialized public context file"
    )
    i.add_argument("file", help="a serialized TenSEAL context")
    i.add_argument("--preset", required=True, help="the preset it must match")
    i.set_defaults(func=_inspect)

    device = [data_dir_options(), passphrase_options(), format_options()]
    r = sub.add_parser(
        "run",
        parents=device,
        help="create a job as its key owner, wait, decrypt and print the result",
    )
    r.add_argument("--aggregator", required=True, metavar="NODE")
    r.add_argument("--op", choices=("sum", "mean", "stats"), default="mean")
    r.add_argument("--length", type=int, required=True, help="values per contribution")
    r.add_argument("--contributors", type=int, required=True, help="contributions to wait for")
    r.add_argument("--min-contributors", type=int, default=2)
    r.add_argument("--timeout", type=float, default=120.0, metavar="S", help="the job's deadline")
    r.add_argument("--preset", default="standard-8192")
    r.add_argument("--max-abs-value", type=float, default=1.0, metavar="X")
    r.set_defaults(func=_run)

    c = sub.add_parser(
        "contribute", parents=device, help="encrypt this device's vector and send it to a job"
    )
    c.add_argument("--aggregator", required=True, metavar="NODE")
    c.add_argument("--job", required=True, metavar="ID")
    c.add_argument("--values", metavar="X,Y,...", help="comma-separated numbers")
    c.add_argument("--values-file", metavar="FILE", help="a JSON array of numbers")
    c.add_argument("--weight", type=float, default=1.0)
    c.set_defaults(func=_contribute)
