"""Suite-wide test settings.

Hypothesis' default 200 ms per-example deadline measures the machine, not the
code: on a loaded 2-core CI runner a correct example can take longer, and a
test that fails for that reason is a flaky test. Timing lives in ``bench/``;
here every example must simply be correct. The ``too_slow`` health check is
off for the same reason. Set ``HYPOTHESIS_PROFILE=dev`` to get the defaults
back while working on a strategy.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--adversarial-long",
        action="store_true",
        default=False,
        help="run the sustained attacks of tests/adversarial for a minute each instead of seconds",
    )
    parser.addoption(
        "--storage-long",
        action="store_true",
        default=False,
        help="run the storage acceptance tests on 6 edges, with a 1 GiB streamed put/get",
    )
    parser.addoption(
        "--demo-long",
        action="store_true",
        default=False,
        help="run the demo's --keep, interrupted and killed runs (the whole demo runs by default)",
    )
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        default=False,
        help="run every decoder fuzzer of tests/fuzz for 100,000 inputs instead of a few dozen",
    )
    parser.addoption(
        "--reliability-long",
        action="store_true",
        default=False,
        help="run the fault-injection and load tests of tests/reliability at full size (minutes)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # tests/fuzz/fuzz_support.py reads this at import, i.e. after configure, before collection.
    if config.getoption("--fuzz-long"):
        os.environ["SECUREMESH_FUZZ_LONG"] = "1"


settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
