"""TokenStore: durable, one-time (exactly one winner under races), expiring; node-id binding."""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from securemesh.crypto import Tier
from securemesh.enroll._store import TokenKeySync, TokenStore
from securemesh.errors import ConfigError, LocalError, TokenError

NOW = 1_800_000_000
KEY = bytes(32)


def _create(store: TokenStore, ttl_s: int = 60, **kw: object) -> bytes:
    token = store.create(
        authority_id="mesh",
        root_key=bytes(range(32)),
        server_key=bytes(range(32, 64)),
        server_id="cloud-1",
        endpoint="tcp://127.0.0.1:7100",
        issuer="mesh",
        tier=kw.pop("tier", "end"),  # type: ignore[arg-type]
        roles=("sensor",),
        ttl_s=ttl_s,
        now=NOW,
        **kw,  # type: ignore[arg-type]
    )
    return token.token_id


def test_create_get_list_persist(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tokens.db"
    with TokenStore(path) as store:
        tid = _create(store)
        record = store.get(tid)
        assert record is not None
        assert (record.tier, record.roles, record.issuer) == (Tier.END, ("sensor",), "mesh")
        assert record.expires_at == NOW + 60
        assert not record.used
    with TokenStore(path) as again:  # durable across re-opening
        assert again.get(tid) == record
        assert [r.token_id for r in again.list_tokens()] == [tid]
        assert again.get(b"short") is None
    # The secret itself is nowhere in the database file.
    # (only its SHA-256 and HKDF outputs are stored; checked at the record level too)


def test_secret_not_stored(tmp_path: Path) -> None:
    with TokenStore(tmp_path / "t.db") as store:
        token = store.create(
            authority_id="mesh",
            root_key=bytes(32),
            server_key=bytes(32),
            server_id="cloud-1",
            endpoint="tcp://127.0.0.1:1",
            issuer="mesh",
            tier="edge",
            ttl_s=10,
            now=NOW,
        )
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert token.secret not in blob
    assert token.token_id in blob


def test_one_time_and_expiry(tmp_path: Path) -> None:
    with TokenStore(tmp_path / "t.db") as store:
        tid = _create(store, ttl_s=60)
        assert store.usable(tid, now=NOW + 59).token_id == tid
        with pytest.raises(TokenError, match="expired"):
            store.usable(tid, now=NOW + 60)
        with pytest.raises(TokenError, match="expired"):
            store.mark_used(tid, "dev-1", now=NOW + 60)
        used = store.mark_used(tid, "dev-1", now=NOW + 1)
        assert (used.used_at, used.used_by) == (NOW + 1, "dev-1")
        with pytest.raises(TokenError, match="already used"):
            store.mark_used(tid, "dev-2", now=NOW + 2)
        with pytest.raises(TokenError, match="unknown"):
            store.mark_used(bytes(16), "dev-2", now=NOW + 2)
        with pytest.raises(TokenError, match="already used"):
            store.usable(tid, now=NOW)


def test_listing_filters_revoke_and_prune(tmp_path: Path) -> None:
    with TokenStore(tmp_path / "t.db") as store:
        short, long_, used, withdrawn = (
            _create(store, 10),
            _create(store, 100),
            _create(store, 100),
            _create(store, 100),
        )
        store.mark_used(used, "dev-1", now=NOW)
        assert store.revoke(withdrawn, now=NOW + 1)
        assert not store.revoke(withdrawn, now=NOW + 1)
        usable = store.list_tokens(include_used=False, include_expired=False, now=NOW + 20)
        assert [r.token_id for r in usable] == [long_]
        assert len(store.list_tokens()) == 4
        assert store.prune_expired(now=NOW + 20) == 2  # short and withdrawn
        assert store.get(short) is None
        assert store.get(used) is not None  # used tokens stay until they expire too
        assert store.prune_expired(now=NOW + 100) == 2


def test_find_by_curve_key_and_key_sync(tmp_path: Path) -> None:
    class Target:
        def __init__(self) -> None:
            self.keys: dict[bytes, float] = {}

        def admit_token_key(self, curve_public: bytes, expires_at: float) -> None:
            self.keys[curve_public] = expires_at

        def retire_token_key(self, curve_public: bytes) -> None:
            self.keys.pop(curve_public, None)

    with TokenStore(tmp_path / "t.db") as store:
        tid = _create(store, 100)
        record = store.get(tid)
        assert record is not None
        assert store.find_by_curve_key(record.curve_key, now=NOW) == record
        target, sync = Target(), TokenKeySync(store)
        assert sync.refresh(target, now=NOW) == 1
        assert target.keys == {record.curve_key: float(NOW + 100)}
        store.mark_used(tid, "dev-1", now=NOW)
        assert store.find_by_curve_key(record.curve_key, now=NOW) is None
        assert sync.refresh(target, now=NOW) == 0
        assert target.keys == {}
        assert store.active_curve_keys(now=NOW) == frozenset()


def test_consume_binds_node_ids(tmp_path: Path) -> None:
    with TokenStore(tmp_path / "t.db") as store:
        a, b, c = _create(store), _create(store), _create(store)
        store.consume(a, node_id="dev-1", verify_key=KEY, tier=Tier.END, now=NOW)
        assert store.node_key("dev-1") == KEY
        # Another key may not take the id; the token stays usable.
        with pytest.raises(TokenError, match="other keys"):
            store.consume(b, node_id="dev-1", verify_key=b"\x01" * 32, tier=Tier.END, now=NOW)
        assert store.usable(b, now=NOW)
        # The same key re-enrolling (e.g. after its certificate expired) is fine.
        store.consume(c, node_id="dev-1", verify_key=KEY, tier=Tier.END, now=NOW + 5)
        with pytest.raises(TokenError, match="already used"):
            store.consume(a, node_id="dev-9", verify_key=KEY, tier=Tier.END, now=NOW)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        TokenStore("sqlite://")
    with pytest.raises(ConfigError):
        TokenStore("mysql://u@h/db")
    with TokenStore(tmp_path / "t.db") as store:
        with pytest.raises(LocalError):
            _create(store, ttl_s=0)
        with pytest.raises(LocalError):
            _create(store, tier="galaxy")
        with pytest.raises(LocalError):
            store.mark_used(bytes(16), "bad id!")
        with pytest.raises(LocalError):
            store.create(
                authority_id="mesh",
                root_key=bytes(32),
                server_key=bytes(32),
                server_id="cloud-1",
                endpoint="tcp://127.0.0.1:1",
                issuer="mesh",
                tier="end",
                ttl_s=10,
                now=float("nan"),
            )


def test_threads_race_exactly_one_wins(tmp_path: Path) -> None:
    with TokenStore(tmp_path / "t.db") as setup:
        tids = [_create(setup, 600) for _ in range(5)]
    results: list[tuple[bytes, str, bool]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        with TokenStore(tmp_path / "t.db") as store:  # one engine (pool) per thread
            barrier.wait()
            for tid in tids:
                try:
                    store.consume(
                        tid, node_id=f"dev-{n}", verify_key=bytes([n]) * 32, tier=Tier.END, now=NOW
                    )
                    won = True
                except TokenError:
                    won = False
                with lock:
                    results.append((tid, f"dev-{n}", won))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8 * 5
    for tid in tids:
        winners = [who for t, who, won in results if t == tid and won]
        assert len(winners) == 1
        with TokenStore(tmp_path / "t.db") as store:
            record = store.get(tid)
            assert record is not None
            assert record.used_by == winners[0]


def _race(path: str, tid: bytes, n: int, start: object, out: object) -> None:
    store = TokenStore(path)
    start.wait()  # type: ignore[attr-defined]
    try:
        store.mark_used(tid, f"dev-{n}", now=NOW)
        out.put((n, True))  # type: ignore[attr-defined]
    except TokenError:
        out.put((n, False))  # type: ignore[attr-defined]
    finally:
        store.close()


def test_processes_race_exactly_one_wins(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    with TokenStore(path) as setup:
        tid = _create(setup, 600)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(path, tid, n, start, out)) for n in range(4)]
    for p in procs:
        p.start()
    start.set()
    outcomes = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    winners = [n for n, won in outcomes if won]
    assert len(winners) == 1
    with TokenStore(path) as store:
        record = store.get(tid)
        assert record is not None
        assert record.used_by == f"dev-{winners[0]}"


PG_URL = os.environ.get(
    "SECUREMESH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.mark.postgres
def test_postgres_race_exactly_one_wins() -> None:
    import sqlalchemy

    try:
        store = TokenStore(PG_URL)
    except sqlalchemy.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {exc.__class__.__name__}")
    try:
        tid = _create(store, 600)
        wins: list[bool] = []
        barrier = threading.Barrier(6)

        def worker(n: int) -> None:
            barrier.wait()
            try:
                store.consume(
                    tid,
                    node_id=f"pg-dev-{n}-{tid.hex()[:8]}",
                    verify_key=KEY,
                    tier=Tier.END,
                    now=NOW,
                )
                wins.append(True)
            except TokenError:
                wins.append(False)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert wins.count(True) == 1
    finally:
        store.close()


def test_database_file_is_owner_only(tmp_path: Path) -> None:
    with TokenStore(tmp_path / "t.db"):
        pass
    assert (tmp_path / "t.db").stat().st_mode & 0o077 == 0
