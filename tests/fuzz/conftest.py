"""The long fuzz run (``--fuzz-long``), and the per-decoder input counts.

With ``--fuzz-long`` every test decorated by ``fuzz_support.fuzz`` runs its
normal hypothesis examples and then ``long_examples`` seeded random buffers
through ``test.hypothesis.fuzz_one_input``. A failing buffer is re-raised with
its seed and hex so that ``fuzz_one_input(bytes.fromhex(...))`` reproduces it.
The summary lists how many inputs each decoder saw (and writes them as JSON
to ``$SECUREMESH_FUZZ_REPORT`` when set).
"""

from __future__ import annotations

import os
import random
import time
import zlib
from collections.abc import Iterator

import pytest
from fuzz_support import COUNTS, long_mode, report, write_report

_LONG_TIMES: dict[str, tuple[int, float]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Iterator[None]:
    result = yield
    test = pyfuncitem.obj
    count = getattr(test, "_fuzz_long_examples", None)
    if long_mode() and count:
        seed = zlib.crc32(pyfuncitem.nodeid.encode())
        rng = random.Random(seed)
        fuzz_one_input = test.hypothesis.fuzz_one_input
        start = time.perf_counter()
        for i in range(count):
            buffer = rng.randbytes(rng.choice((8, 32, 128, 512, 2048)))
            try:
                fuzz_one_input(buffer)
            except BaseException as exc:
                replay = f"fuzz_one_input(bytes.fromhex({buffer.hex()!r}))"
                exc.add_note(f"fuzz-long input {i} (seed {seed}): {replay}")
                raise
        _LONG_TIMES[pyfuncitem.nodeid] = (count, time.perf_counter() - start)
    return result


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    terminalreporter.section("fuzz inputs per decoder")
    for name, row in report().items():
        terminalreporter.write_line(
            f"{name:44} {row['inputs']:>9} inputs "
            f"{row['decoder_seconds']:>8.2f} s  {row['outcomes']}"
        )
    for nodeid, (count, seconds) in _LONG_TIMES.items():
        terminalreporter.write_line(f"long: {nodeid} {count} buffers in {seconds:.0f} s")
    path = os.environ.get("SECUREMESH_FUZZ_REPORT")
    if path:
        write_report(path)
