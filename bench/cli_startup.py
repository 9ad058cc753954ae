"""CLI start-up: what ``securemesh --help`` costs over a bare interpreter.

    python bench/cli_startup.py [--runs 15]

Each measurement is a fresh process of the interpreter running this script:
``python -c pass`` (the baseline) and ``python -m securemesh --help`` (the
same code as the ``securemesh`` console script, without depending on PATH),
alternated ``--runs`` times so machine load hits both alike. The figures are
medians of the wall time (the minimum is printed too); ``overhead_s`` is the
difference of the medians, ``target_met`` says whether it is <= 0.1 s (the
issue's target: command modules are imported lazily, see
``securemesh/cli/__init__.py``). ``help_modules`` lists securemesh modules the
help imported (should be only the package, its errors and the CLI's
``__init__``).

The LAST line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

TARGET_S = 0.1

_LIST_MODULES = (
    "import runpy, sys\n"
    "sys.argv = ['securemesh', '--help']\n"
    "try:\n"
    "    runpy.run_module('securemesh', run_name='__main__')\n"
    "except SystemExit:\n"
    "    pass\n"
    "print(sorted(m for m in sys.modules if m.startswith('securemesh')), file=sys.stderr)\n"
)


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="processes of each kind")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    bare_cmd = [sys.executable, "-c", "pass"]
    help_cmd = [sys.executable, "-m", "securemesh", "--help"]
    _time(help_cmd)  # warm the file cache and the bytecode
    bare: list[float] = []
    helps: list[float] = []
    for _ in range(args.runs):
        bare.append(_time(bare_cmd))
        helps.append(_time(help_cmd))
    probe = subprocess.run(
        [sys.executable, "-c", _LIST_MODULES], capture_output=True, text=True, check=True
    )
    modules = json.loads(probe.stderr.strip().splitlines()[-1].replace("'", '"'))
    bare_s, help_s = statistics.median(bare), statistics.median(helps)
    result = {
        "bench": "cli_startup",
        "runs": args.runs,
        "python_pass_s": round(bare_s, 4),
        "python_pass_min_s": round(min(bare), 4),
        "securemesh_help_s": round(help_s, 4),
        "securemesh_help_min_s": round(min(helps), 4),
        "overhead_s": round(help_s - bare_s, 4),
        "target_s": TARGET_S,
        "target_met": help_s - bare_s <= TARGET_S,
        "help_modules": modules,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(
        f"python -c pass {bare_s * 1000:.1f} ms, securemesh --help {help_s * 1000:.1f} ms "
        f"(median of {args.runs})",
        file=sys.stderr,
    )
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
