"""Federated learning on scikit-learn's handwritten digits, split non-IID across 20 devices.

    python examples/federated_digits.py [--rounds 30] [--mode secagg|he|plain] [--model lr|mlp]
                                        [--out digits.png] [--seed 0]

The 8x8 digits (1,797 images, shipped inside scikit-learn) are split 75/25
into train and held-out test sets; the training set is dealt to 20 devices
with label proportions drawn from a Dirichlet(0.5) distribution per device
(the usual non-IID benchmark split: most devices see mostly a few digits).
Three runs, same model and seed:

* FedAvg (McMahan et al. 2017): 10 devices per round, 2 local epochs;
* FedProx (Li et al. 2020): the same with mu = 0.1;
* centralized: the same SGD on the pooled training set, one epoch per round.

Federated rounds aggregate with ``--mode`` (``secagg``: SecAgg+ over
quantized updates, the server sees only the sum; ``he``: each device's
weighted update encrypted under the model owner's CKKS public context, summed
by an aggregator that holds no secret key, only the sum decrypted). Prints
the held-out accuracy per round and saves a PNG chart of the three curves.
The last line is one JSON object with the final accuracies.
"""

from __future__ import annotations

import argparse
import json
import sys

import matplotlib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from securemesh.fl import (
    MLP,
    Federation,
    LocalTraining,
    LogisticRegression,
    Model,
    make_aggregator,
    train_local,
)

DEVICES = 20


def load(
    seed: int,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    digits = load_digits()
    x = digits.data / 16.0
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    rng = np.random.default_rng(seed)
    shards: list[list[int]] = [[] for _ in range(DEVICES)]
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(y_tr == label))
        props = rng.dirichlet(np.full(DEVICES, 0.5))
        cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
        for d, part in enumerate(np.split(idx, cuts)):
            shards[d].extend(part.tolist())
    data = {}
    for d, shard in enumerate(shards):
        keep = shard or [int(rng.integers(len(y_tr)))]  # every device has an example
        data[f"device-{d:02d}"] = (x_tr[keep], y_tr[keep])
    return data, (x_te, y_te)


def centralized(
    *,
    model: Model,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    test: tuple[np.ndarray, np.ndarray],
    rounds: int,
    lr: float,
    seed: int,
) -> list[float]:
    x = np.concatenate([d[0] for d in data.values()])
    y = np.concatenate([d[1] for d in data.values()])
    rng = np.random.default_rng(seed)
    params = model.init(np.random.default_rng(seed))
    out = []
    for _ in range(rounds):
        params = params + train_local(model, params, x, y, LocalTraining(lr=lr), rng=rng)
        out.append(float((model.predict(params, test[0]) == test[1]).mean()))
    return out


def federated(
    *,
    model: Model,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    test: tuple[np.ndarray, np.ndarray],
    rounds: int,
    local: LocalTraining,
    mode: str,
    seed: int,
) -> list[float]:
    options = {"clip": 4.0, "max_weight": 1000} if mode in ("secagg", "he") else {}
    fed = Federation(
        model,
        data,
        local=local,
        clients_per_round=10,
        aggregator=make_aggregator(mode, **options),
        seed=seed,
        evaluate=test,
    )
    return [float(r.accuracy or 0.0) for r in fed.run(rounds)]


def chart(path: str, curves: dict[str, list[float]], title: str) -> None:
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after choosing the backend

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for name, acc in curves.items():
        ax.plot(range(1, len(acc) + 1), acc, label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--mode", default="secagg", choices=["secagg", "he", "plain"])
    ap.add_argument("--model", default="lr", choices=["lr", "mlp"])
    ap.add_argument("--mu", type=float, default=0.1)
    ap.add_argument("--out", default="federated_digits.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data, test = load(args.seed)
    model: Model = LogisticRegression(64, 10) if args.model == "lr" else MLP(64, 32, 10)
    lr = 0.1
    common = {"model": model, "data": data, "test": test, "rounds": args.rounds, "seed": args.seed}
    fedavg = LocalTraining(epochs=2, lr=lr)
    fedprox = LocalTraining("fedprox", mu=args.mu, epochs=2, lr=lr)
    curves = {
        "FedAvg": federated(local=fedavg, mode=args.mode, **common),  # type: ignore[arg-type]
        f"FedProx (mu={args.mu})": federated(local=fedprox, mode=args.mode, **common),  # type: ignore[arg-type]
        "centralized": centralized(lr=lr, **common),  # type: ignore[arg-type]
    }
    for r in range(args.rounds):
        print(f"round {r + 1:3d}  " + "  ".join(f"{k} {v[r]:.3f}" for k, v in curves.items()))
    chart(args.out, curves, f"digits, {DEVICES} non-IID devices, {args.model}, {args.mode}")
    print(f"chart saved to {args.out}")
    print(json.dumps({k: round(v[-1], 4) for k, v in curves.items()} | {"rounds": args.rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
