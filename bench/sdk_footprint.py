"""Device SDK footprint: what ``python -c "import securemesh.sdk"`` costs on this machine.

    python bench/sdk_footprint.py [--runs 7]

Each measurement is a fresh interpreter (the same one running this script),
started ``--runs`` times; the figure is the median (the minimum is printed
too). Peak RSS is the child's own high-water mark (``VmHWM`` from
``/proc/self/status``, read as the child's last act; ``ru_maxrss`` is not
used because Linux carries it across ``exec`` from the parent).

* ``import_s`` / ``peak_rss_mb``: ``python -c "import securemesh.sdk"``, the
  whole process (interpreter start-up included), as the issue states it;
* ``baseline_import_s`` / ``baseline_peak_rss_mb``: ``python -c pass`` (plus
  the same tiny probe that reads the high-water mark);
* ``import_only_s``: the import alone, timed inside the child;
* ``connect_stack_*``: the same for the modules a device loads when it
  enrolls/connects (node runtime, transport with pyzmq, enrollment client) —
  what a running device pays, for context;
* ``heavy_modules``: any of sqlalchemy/tenseal/numpy/securemesh.cli (and, for
  the bare import, pydantic/nacl/cryptography/zmq) the import pulled in (must
  be empty);
* ratios ``import_vs_baseline`` and ``rss_vs_baseline``; ``targets_met``
  (``import_s`` <= 0.25 and ``peak_rss_mb`` <= 35).

The LAST line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

FORBIDDEN = ("sqlalchemy", "tenseal", "numpy", "securemesh.cli")
LAZY = ("pydantic", "nacl", "cryptography", "zmq", "asyncio")
TARGET_S = 0.25
TARGET_MB = 35.0

_HWM = (
    "def _hwm():\n"
    "    try:\n"
    "        for line in open('/proc/self/status'):\n"
    "            if line.startswith('VmHWM:'):\n"
    "                return int(line.split()[1]) / 1024\n"
    "    except OSError:\n"
    "        pass\n"
    "    import resource\n"
    "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
)

_PROBE = (
    _HWM
    + """
import sys, time
t = time.perf_counter()
{stmt}
dt = time.perf_counter() - t
print(dt)
print(_hwm())
print(",".join(sorted(m for m in sys.modules)))
"""
)

CONNECT_STACK = (
    "import securemesh.sdk, securemesh.sdk._async, securemesh.node, securemesh.transport, "
    "securemesh.enroll._client, zmq.asyncio"
)


def run_once(stmt: str) -> tuple[float, float, float, set[str]]:
    """(wall seconds, peak RSS MiB, in-process import seconds, loaded modules) of one child."""
    code = _PROBE.format(stmt=stmt)
    read_fd, write_fd = os.pipe()
    start = time.perf_counter()
    pid = os.posix_spawn(
        sys.executable,
        [sys.executable, "-c", code],
        dict(os.environ),
        file_actions=[(os.POSIX_SPAWN_DUP2, write_fd, 1), (os.POSIX_SPAWN_CLOSE, read_fd)],
    )
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _pid, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{stmt!r} failed with status {status}")
    del usage  # ru_maxrss survives exec on Linux (it would count this process): use VmHWM
    lines = b"".join(chunks).decode().splitlines()
    return wall, float(lines[1]), float(lines[0]), set(lines[2].split(","))


def measure(stmt: str, runs: int) -> dict[str, object]:
    samples = [run_once(stmt) for _ in range(runs)]
    walls = [s[0] for s in samples]
    rss = [s[1] for s in samples]
    inner = [s[2] for s in samples]
    modules = samples[-1][3]
    return {
        "s": statistics.median(walls),
        "min_s": min(walls),
        "rss_mb": statistics.median(rss),
        "inner_s": statistics.median(inner),
        "modules": modules,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    base = measure("pass", args.runs)
    sdk = measure("import securemesh.sdk", args.runs)
    stack = measure(CONNECT_STACK, max(3, args.runs // 2))
    sdk_modules: set[str] = sdk["modules"]  # type: ignore[assignment]
    stack_modules: set[str] = stack["modules"]  # type: ignore[assignment]

    def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
        return sorted(n for n in names if n in modules)

    heavy = loaded(sdk_modules, FORBIDDEN + LAZY)
    result = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "runs": args.runs,
        "import_s": round(float(sdk["s"]), 4),  # type: ignore[arg-type]
        "import_min_s": round(float(sdk["min_s"]), 4),  # type: ignore[arg-type]
        "import_only_s": round(float(sdk["inner_s"]), 4),  # type: ignore[arg-type]
        "peak_rss_mb": round(float(sdk["rss_mb"]), 2),  # type: ignore[arg-type]
        "baseline_import_s": round(float(base["s"]), 4),  # type: ignore[arg-type]
        "baseline_peak_rss_mb": round(float(base["rss_mb"]), 2),  # type: ignore[arg-type]
        "import_vs_baseline": round(float(sdk["s"]) / float(base["s"]), 3),  # type: ignore[arg-type]
        "rss_vs_baseline": round(float(sdk["rss_mb"]) / float(base["rss_mb"]), 3),  # type: ignore[arg-type]
        "connect_stack_import_s": round(float(stack["s"]), 4),  # type: ignore[arg-type]
        "connect_stack_peak_rss_mb": round(float(stack["rss_mb"]), 2),  # type: ignore[arg-type]
        "connect_stack_forbidden_modules": loaded(stack_modules, FORBIDDEN),
        "heavy_modules": heavy,
    }
    result["targets_met"] = (
        result["import_s"] <= TARGET_S and result["peak_rss_mb"] <= TARGET_MB and not heavy
    )
    print(
        f"import securemesh.sdk: {result['import_s']:.3f} s (min {result['import_min_s']:.3f} s, "
        f"import alone {result['import_only_s'] * 1000:.1f} ms), peak RSS "
        f"{result['peak_rss_mb']:.1f} MiB"
    )
    print(
        f"python -c pass:        {result['baseline_import_s']:.3f} s, peak RSS "
        f"{result['baseline_peak_rss_mb']:.1f} MiB"
    )
    print(
        f"connect stack:         {result['connect_stack_import_s']:.3f} s, peak RSS "
        f"{result['connect_stack_peak_rss_mb']:.1f} MiB"
    )
    print(f"heavy modules pulled in by the bare import: {heavy or 'none'}")
    print(json.dumps(result, sort_keys=True))
    return 0 if result["targets_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
