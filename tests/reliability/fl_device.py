"""One FL participant as its own process: ``python fl_device.py DATA_DIR INDEX MARKS``.

Connects the enrolled device in ``DATA_DIR`` (passphrase in ``SECUREMESH_PASSPHRASE``),
joins the federation coordinated by ``edge-a`` with a local trainer over its own
synthetic data, writes ``MARKS/<index>.joined`` once the coordinator accepted the join
and ``MARKS/<index>.trained-<n>`` each time it trained (the test kills it on that mark:
mid-round), then serves until it is terminated or killed.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import numpy as np

from securemesh.fl import LocalTraining, LogisticRegression, train_local
from securemesh.sdk import Device

MODEL = LogisticRegression(4, 2)


def data(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    y = rng.integers(0, 2, 60)
    x = rng.normal(0, 1, (60, 4)) + np.where(y[:, None] == 1, 1.5, -1.5)
    return x, y.astype(np.int64)


def main() -> None:
    data_dir, index, marks = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    x, y = data(index)
    rng = np.random.default_rng(100 + index)
    trained = [0]

    def train(params: np.ndarray) -> tuple[np.ndarray, int]:
        update = params + train_local(MODEL, params, x, y, LocalTraining(lr=0.2), rng=rng)
        trained[0] += 1
        (marks / f"{index}.trained-{trained[0]}").touch()
        return update, len(y)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Device.connect(data_dir, connect_timeout=30) as dev:
        dev.join_federation("edge-a", train, samples=len(y), timeout=30)
        (marks / f"{index}.joined").touch()
        stop.wait()


if __name__ == "__main__":
    main()
