"""Secure aggregation benchmark: one SecAgg+ round against the same round in plain.

    python bench/fl.py [--clients 100] [--params 100000] [--dropout 0.1] [--seed 1]

One round of the sans-I/O protocol (``securemesh.fl``), every client in this
process, frames encoded and decoded as on the bus (the in-memory transport of
``securemesh.fl.run_in_memory``): ``--clients`` clients with ``--params``
float parameters each, quantized into Z_2^32 (clip 1, sample-count weights up
to 100), a SecAgg+ neighbour graph of degree 2 ceil(log2 n) (14 for 100
clients, 15 holders per secret, threshold 8: Flower's ``num_shares=15,
reconstruction_threshold=8``), and ``--dropout`` of the clients vanishing
after sharing their keys and *before* sending their masked inputs (the
expensive case: the server rebuilds their masking keys and removes their
pairwise masks). The baseline is the same round in plain aggregation: the
same quantized vectors, sent unmasked in the same frames and summed.

Prints a line per figure, then, as the LAST line, one JSON object:
``client_s`` (client code, summed over clients, quantization included),
``server_s``, ``total_s`` (wall time of the round), ``plain_total_s``,
``bytes_per_client`` (mean bytes sent by a client that finished),
``ratio_secagg_vs_plain`` (total_s / plain_total_s), ``total_cpu_s`` and
``plain_total_cpu_s`` (this process's CPU time for the same spans: on a
loaded shared machine the wall time also counts the time other processes
held the cores), ``exact`` (the secure sum equals the plain sum of the
survivors), and the set-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time

import numpy as np

from securemesh.crypto import Ed25519Signer
from securemesh.fl import Quantizer, SecAggClient, SecAggConfig, SecAggServer, run_in_memory
from securemesh.fl._messages import MaskedInput, decode


def plain_round(
    cfg: SecAggConfig,
    quant: Quantizer,
    updates: dict[str, np.ndarray],
    weights: dict[str, int],
    finished: list[str],
) -> tuple[float, float, float, float]:
    """The baseline: the same quantized vectors, unmasked, in the same frames, summed."""
    t_wall = time.perf_counter()
    plain_client_s = 0.0
    frames = []
    for c in finished:
        t0 = time.perf_counter()
        vec = quant.encode(updates[c], weights[c])
        frames.append(MaskedInput(cfg.round_id, c, vec.astype("<u4").tobytes()).encode())
        plain_client_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    total = np.zeros(cfg.length, dtype=np.uint32)
    for frame in frames:
        msg = decode(frame)
        assert isinstance(msg, MaskedInput)
        total += np.frombuffer(msg.vector, dtype="<u4")
    plain_server_s = time.perf_counter() - t0
    plain_total_s = time.perf_counter() - t_wall
    return plain_client_s, plain_server_s, plain_total_s, sum(map(len, frames)) / len(frames)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--params", type=int, default=100_000)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    n, length = args.clients, args.params
    rnd = random.Random(args.seed)
    ids = [f"device-{i:04d}" for i in range(n)]
    signers = {c: Ed25519Signer.generate() for c in ids}
    vks = {c: s.verify_key for c, s in signers.items()}
    quant = Quantizer.fitting(bits=32, clip=1.0, max_clients=n, max_weight=100)
    rng = np.random.default_rng(args.seed)  # synthetic updates only
    updates = {c: rng.normal(0.0, 0.05, length) for c in ids}
    weights = {c: rnd.randint(1, 100) for c in ids}
    dropped = set(rnd.sample(ids, round(args.dropout * n)))

    # -- SecAgg+
    cfg = SecAggConfig(
        round_id=os.urandom(16),
        cohort=tuple(ids),
        length=quant.encoded_length(length),
        graph_seed=os.urandom(32),
        bits=quant.bits,
    )
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    t0 = time.perf_counter()
    vectors = {c: quant.encode(updates[c], weights[c]) for c in ids}
    clients = {c: SecAggClient(cfg, c, signers[c], vks, vector=vectors[c]) for c in ids}
    quant_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    server = SecAggServer(cfg, vks)
    setup_server_s = time.perf_counter() - t0
    run = run_in_memory(server, clients, dropouts=dict.fromkeys(dropped, "masked"))
    total_s = time.perf_counter() - t_wall
    total_cpu_s = time.process_time() - t_cpu
    if server.result is None:
        print(f"round aborted: {server.abort_reason}", file=sys.stderr)
        return 1
    client_s = run.client_s + quant_s
    server_s = run.server_s + setup_server_s
    finished = [c for c in ids if c not in dropped]
    bytes_per_client = sum(run.bytes_sent[c] for c in finished) / len(finished)

    t_cpu = time.process_time()
    plain_client_s, plain_server_s, plain_total_s, plain_bytes = plain_round(
        cfg, quant, updates, weights, finished
    )
    plain_cpu_s = time.process_time() - t_cpu

    expected = np.zeros(cfg.length, dtype=np.uint32)
    for c in finished:
        expected += vectors[c]
    exact = bool(np.array_equal(server.result, expected))
    _, weight = quant.decode_mean(server.result)

    print(f"machine        {platform.processor() or platform.machine()}, load {os.getloadavg()}")
    print(f"secagg+        k={cfg.k} holders={cfg.k + 1} t={cfg.t} bits={cfg.bits}")
    print(f"clients        {client_s:.3f} s summed ({quant_s:.3f} s quantizing)")
    print(f"server         {server_s:.3f} s")
    print(f"total          {total_s:.3f} s (plain {plain_total_s:.3f} s)")
    print(f"cpu            {total_cpu_s:.3f} s (plain {plain_cpu_s:.3f} s)")
    print(f"bytes/client   {bytes_per_client:,.0f} (plain {plain_bytes:,.0f})")
    print(f"exact sum      {exact}; total weight {weight}; survivors {len(server.survivors)}")
    print(
        json.dumps(
            {
                "clients": n,
                "params": length,
                "dropout": args.dropout,
                "degree": cfg.k,
                "threshold": cfg.t,
                "client_s": round(client_s, 4),
                "server_s": round(server_s, 4),
                "total_s": round(total_s, 4),
                "plain_client_s": round(plain_client_s, 4),
                "plain_server_s": round(plain_server_s, 4),
                "plain_total_s": round(plain_total_s, 4),
                "bytes_per_client": round(bytes_per_client),
                "plain_bytes_per_client": round(plain_bytes),
                "ratio_secagg_vs_plain": round(total_s / plain_total_s, 2),
                "total_cpu_s": round(total_cpu_s, 4),
                "plain_total_cpu_s": round(plain_cpu_s, 4),
                "exact": exact,
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
