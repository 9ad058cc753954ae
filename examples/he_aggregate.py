"""Average energy use across devices without revealing any device's reading (CKKS, docs/he.md).

Three roles, each an enrolled SecureMesh node:

* the **analyst** (a device enrolled with ``--roles he-keyholder``) creates a
  job at an aggregator and keeps the secret key::

      python examples/he_aggregate.py owner --data-dir ./analyst \\
          --aggregator edge-1 --meters 3 --timeout 120

  It prints the job id, waits, and prints the mean kWh per hour of the day;
* each **meter** (any device the operator's policy admits) encrypts its 24
  hourly readings under the job's public context and sends them::

      python examples/he_aggregate.py meter --data-dir ./meter-7 \\
          --aggregator edge-1 --job <job id> --kwh 0.4,0.3,...   # 24 values

* the **aggregator** (an edge daemon) loads the HE service in ``node.toml``
  (``services = ["securemesh.he:make_service"]`` and a ``[[policy.allow]]``
  for ``he.*``) and only ever holds the public context: it adds ciphertexts
  it cannot read.

The passphrase of each data dir comes from ``SECUREMESH_PASSPHRASE``. A
refusal (an ``error:`` line, exit 1) names its reason, e.g. a meter whose
ciphertext is malformed, or a job past its deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from securemesh.errors import SecureMeshError
from securemesh.sdk import Device, he_contribute, he_key_owner

if TYPE_CHECKING:
    from securemesh.he import HeJob

HOURS = 24


def start_job(device: Device, aggregator: str, meters: int, timeout: float) -> HeJob:
    """Create the job at the aggregator (the secret key stays in the returned object)."""
    owner = he_key_owner(device, aggregator)
    return asyncio.run(
        owner.create_job(
            "mean",
            length=HOURS,
            max_contributors=meters,
            timeout=timeout,
            preset="standard-8192",
            max_abs_value=100.0,  # kWh in an hour, at most
        )
    )


def finish_job(device: Device, aggregator: str, job: HeJob, timeout: float) -> list[float]:
    """Wait for the encrypted result, decrypt it, print and return the mean kWh per hour."""
    result = asyncio.run(he_key_owner(device, aggregator).result(job, wait=timeout + 30))
    print(
        f"{result.count} meters; error bound of the mean: {result.error_bound / result.count:.2e}"
    )
    for hour, kwh in enumerate(result.mean):
        print(f"{hour:02d}:00  {kwh:8.3f} kWh")
    return [float(v) for v in result.mean]


def run_owner(device: Device, aggregator: str, meters: int, timeout: float) -> list[float]:
    """Create the job, print its id, wait for the result; the mean kWh per hour."""
    job = start_job(device, aggregator, meters, timeout)
    print(f"job {job.id}: waiting for {meters} meters (at most {timeout:.0f} s)", flush=True)
    return finish_job(device, aggregator, job, timeout)


def run_meter(device: Device, aggregator: str, job_id: str, kwh: Sequence[float]) -> None:
    """Encrypt and send this meter's readings."""
    if len(kwh) != HOURS:
        raise SystemExit(f"error: --kwh takes {HOURS} values, got {len(kwh)}")
    accepted = he_contribute(device, aggregator, job_id, list(kwh))
    print(f"sent {HOURS} encrypted readings ({accepted.received} ciphertexts) to {aggregator}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["owner", "meter"])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--aggregator", required=True)
    parser.add_argument("--meters", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--job")
    parser.add_argument("--kwh", default="")
    args = parser.parse_args(argv)
    passphrase = os.environ.get("SECUREMESH_PASSPHRASE")
    try:
        with Device.connect(args.data_dir, passphrase=passphrase) as device:
            if args.role == "owner":
                run_owner(device, args.aggregator, args.meters, args.timeout)
            else:
                if not args.job:
                    raise SystemExit("error: a meter needs --job")
                values = [float(v) for v in args.kwh.split(",") if v.strip()]
                run_meter(device, args.aggregator, args.job, values)
    except (SecureMeshError, TimeoutError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
