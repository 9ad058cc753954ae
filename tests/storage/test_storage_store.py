"""The shard store on real files and a real SQLite database (and PostgreSQL when available)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemesh.audit.log import open_log
from securemesh.audit.store import create_audit_engine
from securemesh.crypto.identity import NodeIdentity
from securemesh.storage import (
    QuotaExceeded,
    ShardCorrupt,
    ShardNotFound,
    ShardStore,
    StoreStats,
    shard_hash,
)

OID = "ab" * 16


def test_put_get_is_content_addressed_atomic_and_private(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "s")
    data = os.urandom(5000)
    digest = shard_hash(data)
    assert store.put(digest, data, owner="dev", object_id=OID) is True
    path = store.blob_path(digest)
    assert path.name == digest.hex()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
    assert store.get(digest) == data
    assert list((tmp_path / "s" / "tmp").iterdir()) == []  # no temp file left behind
    # the same shard again for the same owner/object changes nothing
    assert store.put(digest, data, owner="dev", object_id=OID) is False
    # survives a reopen (metadata in SQLite)
    store.close()
    again = ShardStore(tmp_path / "s")
    assert again.get(digest) == data
    assert again.stats().shards == 1


def test_shard_whose_hash_does_not_match_is_refused(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    data = b"x" * 100
    with pytest.raises(ShardCorrupt):
        store.put(shard_hash(b"other"), data, owner="dev", object_id=OID)
    assert store.stats().shards == 0
    assert not any((tmp_path / "blobs").iterdir())


def test_damaged_blob_on_disk_is_reported_not_served(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    data = os.urandom(1000)
    digest = shard_hash(data)
    store.put(digest, data, owner="dev", object_id=OID)
    path = store.blob_path(digest)
    damaged = bytearray(path.read_bytes())
    damaged[500] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(ShardCorrupt):
        store.get(digest)
    path.unlink()
    with pytest.raises(ShardNotFound):
        store.get(digest)
    with pytest.raises(ShardNotFound):
        store.get(shard_hash(b"never stored"))


def test_a_put_of_a_held_shard_rewrites_a_missing_or_damaged_blob(tmp_path: Path) -> None:
    """How a repair refills the node that lost a shard: the same bytes put again replace a
    missing or damaged blob (and say so); an intact one is left alone; usage is unchanged."""
    store = ShardStore(tmp_path)
    data = os.urandom(1000)
    digest = shard_hash(data)
    assert store.put(digest, data, owner="dev", object_id=OID) is True
    path = store.blob_path(digest)
    path.unlink()
    assert store.put(digest, data, owner="dev", object_id=OID) is True  # refilled
    assert store.get(digest) == data
    damaged = bytearray(path.read_bytes())
    damaged[0] ^= 0x80
    path.write_bytes(bytes(damaged))
    assert store.put(digest, data, owner="other", object_id=OID) is True  # a new ref, refilled
    assert store.get(digest) == data
    before = path.stat().st_mtime_ns
    assert store.put(digest, data, owner="dev", object_id=OID) is False  # intact: no write
    assert path.stat().st_mtime_ns == before
    assert store.stats() == StoreStats(shards=1, bytes=1000, manifests=0)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_quota_total_and_per_owner(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, quota_bytes=3000, owner_quota_bytes=2000)
    a, b, c = os.urandom(1000), os.urandom(1000), os.urandom(1000)
    store.put(shard_hash(a), a, owner="one", object_id=OID)
    store.put(shard_hash(b), b, owner="one", object_id=OID)
    with pytest.raises(QuotaExceeded):  # owner one is at its 2000
        store.put(shard_hash(c), c, owner="one", object_id=OID)
    store.put(shard_hash(c), c, owner="two", object_id=OID)
    d = os.urandom(10)
    with pytest.raises(QuotaExceeded):  # node total 3000 reached
        store.put(shard_hash(d), d, owner="three", object_id=OID)
    with pytest.raises(QuotaExceeded):  # manifests count too
        store.put_manifest(owner="three", name="n", object_id=OID, blob=b"m" * 10)
    assert not store.has(shard_hash(d))


def test_refused_and_repeated_puts_leave_no_blob_or_temp_file(tmp_path: Path) -> None:
    """The blob is written before the lock: every way a put ends without placing it
    (a quota refusal, the owner's reference already there, the shard already held for
    another owner) removes that write again."""
    store = ShardStore(tmp_path, quota_bytes=3000, owner_quota_bytes=2000)
    a, big = os.urandom(1000), os.urandom(2500)
    assert store.put(shard_hash(a), a, owner="one", object_id=OID) is True
    assert store.put(shard_hash(a), a, owner="one", object_id=OID) is False  # already there
    assert store.put(shard_hash(a), a, owner="two", object_id=OID) is False  # one blob, 2 refs
    with pytest.raises(QuotaExceeded):
        store.put(shard_hash(big), big, owner="three", object_id=OID)
    assert not store.has(shard_hash(big))
    assert not store.blob_path(shard_hash(big)).exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == [shard_hash(a).hex()]
    assert store.stats() == StoreStats(shards=1, bytes=1000, manifests=0)


def test_parallel_puts_of_one_shard_store_it_once(tmp_path: Path) -> None:
    """Puts in worker threads (as the service runs them) overlap their writes; the
    shard is placed once and each owner's reference counted once."""
    store = ShardStore(tmp_path)
    data = os.urandom(256 * 1024)
    digest = shard_hash(data)
    owners = [f"o{i % 4}" for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        fresh = list(pool.map(lambda o: store.put(digest, data, owner=o, object_id=OID), owners))
    assert fresh.count(True) == 1
    assert store.stats() == StoreStats(shards=1, bytes=len(data), manifests=0)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert store.get(digest) == data
    for owner in {*owners}:
        assert store.delete(digest, owner=owner, object_id=OID) is True
    assert not store.has(digest)


def test_shard_count_per_owner_is_bounded(tmp_path: Path) -> None:
    """Tiny shards inside a large byte quota still cannot grow the tables without bound."""
    store = ShardStore(tmp_path, max_shards_per_owner=3)
    blobs = [bytes([i]) for i in range(4)]
    for blob in blobs[:3]:
        store.put(shard_hash(blob), blob, owner="one", object_id=OID)
    with pytest.raises(QuotaExceeded, match="too many shards"):
        store.put(shard_hash(blobs[3]), blobs[3], owner="one", object_id=OID)
    store.put(shard_hash(blobs[3]), blobs[3], owner="two", object_id=OID)  # per owner


def test_delete_drops_the_blob_with_the_last_reference(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    data = os.urandom(100)
    digest = shard_hash(data)
    store.put(digest, data, owner="one", object_id=OID)
    store.put(digest, data, owner="two", object_id=OID)
    assert store.delete(digest, owner="one", object_id=OID) is True
    assert store.get(digest) == data  # two still holds it
    assert store.delete(digest, owner="one", object_id=OID) is False  # not one's any more
    assert store.delete_object(owner="two", object_id=OID) == 1
    assert not store.blob_path(digest).exists()
    assert store.stats().shards == 0


def test_gc_removes_orphans(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    keep = os.urandom(100)
    store.put(shard_hash(keep), keep, owner="one", object_id=OID)
    # an interrupted write, a blob renamed into place before its commit, a row whose file vanished
    (tmp_path / "tmp" / "partial").write_bytes(b"half")
    stray = os.urandom(50)
    stray_path = store.blob_path(shard_hash(stray))
    stray_path.parent.mkdir(exist_ok=True)
    stray_path.write_bytes(stray)
    lost = os.urandom(60)
    store.put(shard_hash(lost), lost, owner="one", object_id=OID)
    store.blob_path(shard_hash(lost)).unlink()
    assert store.gc() == 3
    assert store.get(shard_hash(keep)) == keep
    assert not stray_path.exists()
    assert not store.has(shard_hash(lost))
    assert list((tmp_path / "tmp").iterdir()) == []
    assert store.gc() == 0


def test_manifests_per_owner(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, max_manifests_per_owner=2)
    store.put_manifest(owner="one", name="a", object_id=OID, blob=b"A")
    store.put_manifest(owner="one", name="b", object_id=OID, blob=b"B")
    store.put_manifest(owner="one", name="a", object_id=OID, blob=b"A2")  # replace is fine
    with pytest.raises(QuotaExceeded):
        store.put_manifest(owner="one", name="c", object_id=OID, blob=b"C")
    assert store.get_manifest(owner="one", name="a") == b"A2"
    assert store.list_manifests(owner="one") == ["a", "b"]
    assert store.list_manifests(owner="two") == []
    assert store.delete_manifest(owner="one", name="a") is True
    with pytest.raises(ShardNotFound):
        store.get_manifest(owner="one", name="a")


@pytest.mark.postgres
def test_metadata_on_postgresql(tmp_path: Path, audit_pg_url: str) -> None:
    store = ShardStore(tmp_path, db_url=audit_pg_url)
    data = os.urandom(300)
    digest = shard_hash(data)
    store.put(digest, data, owner="pg-owner", object_id=OID)
    assert store.get(digest) == data
    assert store.delete_object(owner="pg-owner", object_id=OID) == 1
    store.close()


def _index_beside_an_audit_log(tmp_path: Path, url: str) -> None:
    """The cloud's object index in the audit log's database: both work, neither disturbs."""
    log = open_log(url, signer=NodeIdentity.generate().signer, origin="cloud-log")
    store = ShardStore(tmp_path / "s", engine=create_audit_engine(url))
    try:
        store.put_manifest(owner="dev", name="a", object_id=OID, blob=b"manifest")
        store.relocate(object_id=OID, column=2, from_node="e1", node="e7")
        assert store.get_manifest(owner="dev", name="a") == b"manifest"
        assert store.relocations(OID) == {2: ("e1", "e7")}
        assert store.stats().manifests == 1
    finally:
        store.close()
        log.close()
    again = ShardStore(tmp_path / "s", engine=create_audit_engine(url))
    try:
        assert again.manifests_after(None) == [("dev", "a", b"manifest")]
    finally:
        again.close()


def test_the_index_lives_in_the_audit_logs_sqlite_database(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    _index_beside_an_audit_log(tmp_path, str(db))
    assert not (tmp_path / "s" / "shards.db").exists()  # nothing in a database of its own


@pytest.mark.postgres
def test_the_index_lives_in_the_audit_logs_postgresql_database(
    tmp_path: Path, audit_pg_url: str
) -> None:
    _index_beside_an_audit_log(tmp_path, audit_pg_url)


@settings(max_examples=15, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["put", "delete", "manifest", "unmanifest"]),
            st.sampled_from(["one", "two"]),
            st.integers(0, 5),
        ),
        max_size=30,
    )
)
def test_kept_usage_matches_a_recount(ops: list[tuple[str, str, int]]) -> None:
    """The usage rows updated with every change equal a recount from the tables (reopen),
    and so do the totals ``stats()`` keeps in memory from the first call on (refused
    changes included: a tight quota refuses some of the puts)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = ShardStore(Path(tmp), quota_bytes=900)
        assert store.stats() == StoreStats(0, 0, 0)  # read once; kept from here on
        blobs = [bytes([i]) * (100 + i) for i in range(6)]
        for op, owner, i in ops:
            if op == "put":
                with contextlib.suppress(QuotaExceeded):
                    store.put(shard_hash(blobs[i]), blobs[i], owner=owner, object_id=OID)
            elif op == "delete":
                store.delete(shard_hash(blobs[i]), owner=owner, object_id=OID)
            elif op == "manifest":
                with contextlib.suppress(QuotaExceeded):
                    store.put_manifest(owner=owner, name=f"m{i}", object_id=OID, blob=blobs[i])
            else:
                store.delete_manifest(owner=owner, name=f"m{i}")
        kept = store.stats()
        store.close()
        again = ShardStore(Path(tmp))
        assert again.stats() == kept
        again.close()


def test_manifests_page_in_order_and_relocations_go_with_their_manifest(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    try:
        for owner, name in [("b", "x"), ("a", "z"), ("a", "y")]:
            store.put_manifest(
                owner=owner, name=name, object_id=owner * 32, blob=b"m" + name.encode()
            )
        first = store.manifests_after(None, 2)
        assert [(o, n) for o, n, _ in first] == [("a", "y"), ("a", "z")]
        rest = store.manifests_after((first[-1][0], first[-1][1]), 2)
        assert [(o, n, b) for o, n, b in rest] == [("b", "x", b"mx")]
        assert store.manifests_after(("b", "x"), 2) == []
        store.relocate(object_id="b" * 32, column=1, from_node="e1", node="e4")
        store.relocate(object_id="b" * 32, column=1, from_node="e1", node="e5")  # replaces
        assert store.relocations("b" * 32) == {1: ("e1", "e5")}
        assert store.relocations("a" * 32) == {}
        assert store.delete_manifest(owner="b", name="x")
        assert store.relocations("b" * 32) == {}
    finally:
        store.close()
