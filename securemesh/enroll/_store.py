"""The durable, one-time, expiring join-token store (SQLAlchemy Core).

Theory of operation
-------------------
One table, ``join_tokens``, keyed by the 16-byte token id. A row holds the
:class:`~securemesh.enroll.TokenRecord` fields: never the token secret, only its
SHA-256, the HKDF-derived proof key and the first-contact CURVE public key (see
:mod:`securemesh.enroll._token` for why that is the right thing to keep).

*One time* is enforced by the database, not by a read-then-write in Python::

    UPDATE join_tokens SET used_at = :now, used_by = :node
     WHERE token_id = :id AND used_at IS NULL AND expires_at > :now

and the token counts as consumed by this caller iff exactly one row changed.
Two enrollments racing with the same token (threads, processes, or two daemons
sharing the file) therefore cannot both win: SQLite serialises writers (the
statement runs under its write lock; WAL mode, a busy timeout so losers wait
instead of failing), PostgreSQL's row lock makes the second UPDATE re-check the
``WHERE`` after the first commits.

The default database is a SQLite file (``tokens.db`` in the authority's or
edge's data dir); any SQLAlchemy URL works (PostgreSQL for a replicated
cloud). Time is injectable: every method takes ``now`` or uses ``clock``.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, NoReturn, Protocol

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine, RowMapping, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.sql import ColumnElement

from securemesh._fileio import enable_wal, private_sqlite_file
from securemesh.crypto.certs import Tier, validate_node_id
from securemesh.enroll._token import (
    SECRET_SIZE,
    TOKEN_ID_SIZE,
    JoinToken,
    TokenRecord,
    validate_endpoint,
    validate_roles,
)
from securemesh.errors import ConfigError, LocalError, TokenError

__all__ = ["DEFAULT_TOKEN_DB", "TokenKeySync", "TokenKeyTarget", "TokenStore"]

DEFAULT_TOKEN_DB: Final = "tokens.db"  # noqa: S105 - a file name
_BUSY_TIMEOUT_S: Final = 30.0
_MAX_TTL_S: Final = 366 * 24 * 3600

_metadata = MetaData()
_tokens = Table(
    "join_tokens",
    _metadata,
    Column("token_id", LargeBinary(16), primary_key=True),
    Column("secret_sha256", LargeBinary(32), nullable=False),
    Column("proof_key", LargeBinary(32), nullable=False),
    Column("curve_key", LargeBinary(32), nullable=False),
    Column("authority_id", String(64), nullable=False),
    Column("issuer", String(64), nullable=False),
    Column("tier", String(8), nullable=False),
    Column("roles", String(600), nullable=False),
    Column("delegate", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("used_at", BigInteger, nullable=True),
    Column("used_by", String(64), nullable=True),
    Index("ix_join_tokens_curve_key", "curve_key"),
    Index("ix_join_tokens_expires_at", "expires_at"),
)
# Node ids this authority has enrolled, bound to the identity key that enrolled them:
# a token holder cannot take over an existing node's id with other keys.
_nodes = Table(
    "enrolled_nodes",
    _metadata,
    Column("node_id", String(64), primary_key=True),
    Column("verify_key", LargeBinary(32), nullable=False),
    Column("tier", String(8), nullable=False),
    Column("token_id", LargeBinary(16), nullable=False),
    Column("enrolled_at", BigInteger, nullable=False),
)


def _usable_at(t: int) -> ColumnElement[bool]:
    """The rows of tokens that are usable at ``t``: unused and unexpired."""
    return and_(_tokens.c.used_at.is_(None), _tokens.c.expires_at > t)


def _now_int(now: float) -> int:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise LocalError("now must be a finite number of Unix seconds")
    return math.floor(now)


def _engine_for(location: str | Path) -> Engine:
    text = str(location)
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = f"sqlite:///{path}"
    url = make_url(text)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise ConfigError("the token store needs a SQLite file (tokens must survive restarts)")
        engine = create_engine(text, connect_args={"timeout": _BUSY_TIMEOUT_S})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            enable_wal(dbapi_conn, _BUSY_TIMEOUT_S)
            cur.execute("PRAGMA synchronous = FULL")
            cur.close()

        return engine
    if backend != "postgresql":
        raise ConfigError(f"unsupported token database {backend!r}")
    return create_engine(text)


def _row_to_record(row: RowMapping) -> TokenRecord:
    roles = str(row["roles"])
    return TokenRecord(
        token_id=bytes(row["token_id"]),
        secret_sha256=bytes(row["secret_sha256"]),
        proof_key=bytes(row["proof_key"]),
        curve_key=bytes(row["curve_key"]),
        authority_id=str(row["authority_id"]),
        issuer=str(row["issuer"]),
        tier=Tier(row["tier"]),
        roles=tuple(roles.split(",")) if roles else (),
        delegate=bool(row["delegate"]),
        created_at=int(row["created_at"]),
        expires_at=int(row["expires_at"]),
        used_at=None if row["used_at"] is None else int(row["used_at"]),
        used_by=None if row["used_by"] is None else str(row["used_by"]),
    )


class _NodeIdTaken(Exception):
    """Internal: roll the consuming transaction back."""


class TokenStore:
    """Durable join-token records: create, look up, consume once, list, prune.

    ``location`` is a file path (SQLite, created with its directory) or a
    SQLAlchemy URL. Safe to share between threads; several processes may
    open the same file.
    """

    def __init__(
        self,
        location: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        engine: Engine | None = None,
    ) -> None:
        self._engine = engine if engine is not None else _engine_for(location)
        self._clock = clock
        database = self._engine.url.database
        if self._engine.dialect.name == "sqlite" and database and database != ":memory:":
            # Proof keys of pending tokens are in here: owner only (like key files),
            # and so are the -wal/-shm files SQLite creates beside it.
            private_sqlite_file(Path(database))
        try:
            _metadata.create_all(self._engine, checkfirst=True)
        except OperationalError:  # another process created the tables meanwhile
            _metadata.create_all(self._engine, checkfirst=True)

    @classmethod
    def in_dir(cls, data_dir: str | Path, *, clock: Callable[[], float] = time.time) -> TokenStore:
        """The store at ``DATA_DIR/tokens.db``."""
        return cls(Path(data_dir) / DEFAULT_TOKEN_DB, clock=clock)

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> TokenStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self, now: float | None) -> int:
        return _now_int(self._clock() if now is None else now)

    # ----------------------------------------------------------------- creating

    def create(
        self,
        *,
        authority_id: str,
        root_key: bytes,
        server_key: bytes,
        server_id: str,
        endpoint: str,
        issuer: str,
        tier: Tier | str,
        roles: Iterable[str] = (),
        ttl_s: int,
        delegate: bool = False,
        name_prefix: str | None = None,
        now: float | None = None,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> JoinToken:
        """Make a fresh token (random id and secret), store its record, return the token.

        ``name_prefix``: the issuing edge's name constraint, written into the token
        so the new node requests an id inside it (the server enforces it anyway).

        The token string (``token.encode()``) is the only place the secret lives.
        """
        if type(ttl_s) is not int or not 1 <= ttl_s <= _MAX_TTL_S:
            raise LocalError(f"ttl_s must be an integer in 1..{_MAX_TTL_S}")
        try:
            tier = Tier(tier)
        except ValueError as exc:
            raise LocalError(f"unknown tier {tier!r}") from exc
        validate_endpoint(endpoint)
        created = self._now(now)
        token = JoinToken(
            authority_id=authority_id,
            root_key=root_key,
            server_key=server_key,
            server_id=server_id,
            endpoint=endpoint,
            token_id=token_bytes(TOKEN_ID_SIZE),
            secret=token_bytes(SECRET_SIZE),
            expires_at=created + ttl_s,
            tier=tier,
            roles=validate_roles(list(roles)),
            delegate=delegate,
            name_prefix=name_prefix,
        )
        token.encode()  # refuse a token that would not fit its size limit before storing it
        self.add(TokenRecord.for_token(token, issuer=issuer, created_at=created))
        return token

    def add(self, record: TokenRecord) -> None:
        """Store a record; LocalError if its token id already exists."""
        validate_node_id(record.issuer, what="issuer id")
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    insert(_tokens).values(
                        token_id=record.token_id,
                        secret_sha256=record.secret_sha256,
                        proof_key=record.proof_key,
                        curve_key=record.curve_key,
                        authority_id=record.authority_id,
                        issuer=record.issuer,
                        tier=record.tier.value,
                        roles=",".join(record.roles),
                        delegate=record.delegate,
                        created_at=record.created_at,
                        expires_at=record.expires_at,
                        used_at=record.used_at,
                        used_by=record.used_by,
                    )
                )
        except IntegrityError as exc:
            raise LocalError("a token with this id already exists") from exc

    # ------------------------------------------------------------------ reading

    def get(self, token_id: bytes) -> TokenRecord | None:
        """The record for ``token_id`` (used or not, expired or not), or None."""
        if type(token_id) is not bytes or len(token_id) != TOKEN_ID_SIZE:
            return None
        with self._engine.connect() as conn:
            row = (
                conn.execute(select(_tokens).where(_tokens.c.token_id == token_id))
                .mappings()
                .first()
            )
        return None if row is None else _row_to_record(row)

    def usable(self, token_id: bytes, *, now: float | None = None) -> TokenRecord:
        """The record if the token is known, unused and unexpired; TokenError otherwise."""
        record = self.get(token_id)
        if record is None:
            raise TokenError("unknown join token")
        if record.withdrawn:
            raise TokenError("join token withdrawn")
        if record.used_at is not None:
            raise TokenError("join token already used")
        if self._now(now) >= record.expires_at:
            raise TokenError("join token expired")
        return record

    def find_by_curve_key(
        self, curve_key: bytes, *, now: float | None = None
    ) -> TokenRecord | None:
        """The usable (unused, unexpired) token whose first-contact key is ``curve_key``."""
        t = self._now(now)
        with self._engine.connect() as conn:
            row = (
                conn.execute(
                    select(_tokens).where(_tokens.c.curve_key == bytes(curve_key), _usable_at(t))
                )
                .mappings()
                .first()
            )
        return None if row is None else _row_to_record(row)

    def active_curve_keys(self, *, now: float | None = None) -> frozenset[bytes]:
        """First-contact CURVE public keys of every usable token (for the ZAP allow set)."""
        t = self._now(now)
        with self._engine.connect() as conn:
            rows = conn.execute(select(_tokens.c.curve_key).where(_usable_at(t))).all()
        return frozenset(bytes(r[0]) for r in rows)

    def list_tokens(
        self,
        *,
        include_used: bool = True,
        include_expired: bool = True,
        now: float | None = None,
    ) -> list[TokenRecord]:
        """Records ordered by creation time (then id)."""
        query = select(_tokens).order_by(_tokens.c.created_at, _tokens.c.token_id)
        if not include_used:
            query = query.where(_tokens.c.used_at.is_(None))
        if not include_expired:
            query = query.where(_tokens.c.expires_at > self._now(now))
        with self._engine.connect() as conn:
            return [_row_to_record(r) for r in conn.execute(query).mappings()]

    # ------------------------------------------------------------------ writing

    def mark_used(self, token_id: bytes, node_id: str, *, now: float | None = None) -> TokenRecord:
        """Consume the token atomically for ``node_id``; TokenError unless this call won.

        Exactly one caller ever succeeds for a token, and only while it is unexpired.
        """
        validate_node_id(node_id)
        t = self._now(now)
        with self._engine.begin() as conn:
            result = conn.execute(
                update(_tokens)
                .where(_tokens.c.token_id == bytes(token_id), _usable_at(t))
                .values(used_at=t, used_by=node_id)
            )
            won = result.rowcount == 1
        if not won:
            self._raise_unusable(bytes(token_id))
        record = self.get(bytes(token_id))
        assert record is not None
        return record

    def consume(
        self,
        token_id: bytes,
        *,
        node_id: str,
        verify_key: bytes,
        tier: Tier,
        now: float | None = None,
    ) -> TokenRecord:
        """Mark the token used by ``node_id`` and bind that id to ``verify_key``, atomically.

        One transaction: the conditional UPDATE of :meth:`mark_used`, then the
        node-id binding. A node id already enrolled with a *different* verify
        key (or another tier) is refused with TokenError and the token stays
        unused; the same key re-enrolling (after its certificate expired) is
        fine. Exactly one caller wins a token.
        """
        validate_node_id(node_id)
        t = self._now(now)
        tid = bytes(token_id)
        try:
            with self._engine.begin() as conn:
                won = (
                    conn.execute(
                        update(_tokens)
                        .where(_tokens.c.token_id == tid, _usable_at(t))
                        .values(used_at=t, used_by=node_id)
                    ).rowcount
                    == 1
                )
                if won:
                    known = (
                        conn.execute(select(_nodes).where(_nodes.c.node_id == node_id))
                        .mappings()
                        .first()
                    )
                    if known is None:
                        conn.execute(
                            insert(_nodes).values(
                                node_id=node_id,
                                verify_key=bytes(verify_key),
                                tier=tier.value,
                                token_id=tid,
                                enrolled_at=t,
                            )
                        )
                    elif bytes(known["verify_key"]) != bytes(verify_key) or known["tier"] != (
                        tier.value
                    ):
                        raise _NodeIdTaken
                    else:
                        conn.execute(
                            update(_nodes)
                            .where(_nodes.c.node_id == node_id)
                            .values(token_id=tid, enrolled_at=t)
                        )
        except (_NodeIdTaken, IntegrityError) as exc:
            raise TokenError(f"node id {node_id!r} is enrolled with other keys") from exc
        if not won:
            self._raise_unusable(tid)
        record = self.get(tid)
        assert record is not None
        return record

    def _raise_unusable(self, token_id: bytes) -> NoReturn:
        record = self.get(token_id)
        if record is None:
            raise TokenError("unknown join token")
        if record.withdrawn:
            raise TokenError("join token withdrawn")
        if record.used_at is not None:
            raise TokenError("join token already used")
        raise TokenError("join token expired")

    def node_key(self, node_id: str) -> bytes | None:
        """The verify key ``node_id`` was enrolled with here, if any."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(_nodes.c.verify_key).where(_nodes.c.node_id == node_id)
            ).first()
        return None if row is None else bytes(row[0])

    def revoke(self, token_id: bytes, *, now: float | None = None) -> bool:
        """Make an unused token unusable (expire it now). True if it was usable.

        The record is marked withdrawn: ``used_at`` set with no ``used_by``
        (``TokenRecord.withdrawn``), so ``token list`` can tell it from an
        expired one; ``prune_expired`` keeps it as long as a used token.
        """
        t = self._now(now)
        with self._engine.begin() as conn:
            result = conn.execute(
                update(_tokens)
                .where(_tokens.c.token_id == bytes(token_id), _usable_at(t))
                .values(expires_at=t, used_at=t, used_by=None)
            )
            return bool(result.rowcount == 1)

    def prune_expired(self, *, now: float | None = None, keep_used_s: int = 0) -> int:
        """Delete expired tokens (used ones ``keep_used_s`` after expiry); return the count."""
        t = self._now(now)
        with self._engine.begin() as conn:
            result = conn.execute(
                delete(_tokens).where(
                    and_(
                        _tokens.c.expires_at <= t,
                        (_tokens.c.used_at.is_(None)) | (_tokens.c.expires_at <= t - keep_used_s),
                    )
                )
            )
            return int(result.rowcount)

    def __repr__(self) -> str:
        return f"TokenStore({self._engine.url.render_as_string(hide_password=True)!r})"


class TokenKeyTarget(Protocol):
    """What :class:`TokenKeySync` feeds: :class:`securemesh.node.Directory` fits."""

    def admit_token_key(self, curve_public: bytes, expires_at: float) -> None: ...

    def retire_token_key(self, curve_public: bytes) -> None: ...


class TokenKeySync:
    """Keeps a node's admitted first-contact keys equal to the store's usable tokens.

    Tokens are created by another process (``securemesh token create``) and
    consumed by enrollments; call :meth:`refresh` at start-up, after each
    enrollment and periodically (e.g. every second): it admits new usable
    tokens' CURVE keys and retires the keys of tokens that were used, revoked
    or pruned since the last call. One indexed query per call.
    """

    def __init__(self, store: TokenStore) -> None:
        self._store = store
        self._admitted: set[bytes] = set()

    def refresh(self, target: TokenKeyTarget, *, now: float | None = None) -> int:
        """Synchronise ``target``; return the number of usable tokens."""
        t = self._store._now(now)
        with self._store.engine.connect() as conn:
            rows = conn.execute(
                select(_tokens.c.curve_key, _tokens.c.expires_at).where(_usable_at(t))
            ).all()
        current = {bytes(key): int(expires) for key, expires in rows}
        for key in self._admitted - current.keys():
            target.retire_token_key(key)
        for key, expires in current.items():
            target.admit_token_key(key, float(expires))
        self._admitted = set(current)
        return len(current)
