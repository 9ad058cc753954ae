"""Streaming with bounded memory: peak memory depends on the segment size, not the object size.

The plans are driven from a real file into three real shard stores (files +
SQLite) and back out into a file, under tracemalloc: an object eight times
larger must not raise the peak by more than a segment's worth.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

from securemesh.crypto.identity import NodeIdentity
from securemesh.storage import GetPlan, PutPlan, ShardStore, open_manifest

SEG = 128 * 1024
NODES = ("edge-a", "edge-b", "edge-c")
OWNER = NodeIdentity.generate()


def _write_source(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            digest.update(chunk)
            fh.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _round_trip(tmp: Path, size: int) -> tuple[int, int, str]:
    """Put ``size`` bytes from a file and get them back into a file; (put peak, get peak, sha)."""
    src, dst = tmp / "src", tmp / "dst"
    _write_source(src, size)
    stores = {node: ShardStore(tmp / node) for node in NODES}
    tracemalloc.start()
    try:
        plan = PutPlan(
            name="big", owner="w", signer=OWNER.signer, size=size, placement=list(NODES),
            readers={"w": OWNER.kx_public}, k=2, n=3, segment_size=SEG,
        )  # fmt: skip
        oid = plan.object_id.hex()
        with src.open("rb") as fh:
            for _ in range(plan.count):
                for put in plan.segment(fh.read(SEG)):
                    stores[put.node].put(put.hash, put.data, owner="w", object_id=oid)
                    plan.stored(put.segment, put.index)
        _, blob = plan.finish()
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        reader = GetPlan.for_reader(open_manifest(blob, OWNER.verify_key), "w", OWNER.kx_secret())
        digest = hashlib.sha256()
        with dst.open("wb") as out:
            for segment in range(reader.count):
                while not reader.ready(segment):
                    for want in reader.wanted(segment):
                        reader.received(segment, want.index, stores[want.node].get(want.hash))
                data = reader.plaintext(segment)
                digest.update(data)
                out.write(data)
                del data
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        for store in stores.values():
            store.close()
    return put_peak, get_peak - base, digest.hexdigest()


def test_peak_memory_depends_on_segment_size_not_object_size(tmp_path: Path) -> None:
    (tmp_path / "small").mkdir()
    (tmp_path / "big").mkdir()
    small_put, small_get, _ = _round_trip(tmp_path / "small", 2 * 1024 * 1024)
    big_size = 16 * 1024 * 1024
    big_put, big_get, big_sha = _round_trip(tmp_path / "big", big_size)
    with (tmp_path / "big" / "src").open("rb") as fh:
        assert big_sha == hashlib.file_digest(fh, "sha256").hexdigest()
    # a segment, its sealed copy, n shards (n/k = 1.5 segments), zfec's and the store's
    # buffers: a bounded number of segments, whatever the object's size
    assert big_put < 10 * SEG, big_put
    assert big_get < 10 * SEG, big_get
    # eight times the object: the peak grows only by the manifest (about 1 KB per segment)
    assert big_put < small_put + 2 * SEG, (small_put, big_put)
    assert big_get < small_get + 2 * SEG, (small_get, big_get)
