"""The shared lineage store: PostgreSQL through psycopg 3.

A write is one transaction: it locks the chain's head row (`SELECT … FOR UPDATE`, creating the
row first for a new chain), writes the entry, the batch's hop rows with one binary `COPY`, and
moves the head. Writers on other connections or machines wait for the lock, so a chain never
forks.

The tables live in the first schema of the connection's `search_path`; choose another with
the libpq option in the URL: `postgresql://…/db?options=-csearch_path%3Dlineage`.

A broken connection (server restarted, network cut) is dropped and reopened on the next call,
so a guard that keeps retrying resumes once the database is back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
from psycopg import pq

from lineage_guard.lineage.chain import GENESIS_HASH, ChainHead, Entry
from lineage_guard.lineage.errors import (
    ConfigError,
    LineageGuardError,
    RowRefusedError,
    ServiceUnavailableError,
)
from lineage_guard.lineage.hops import HopRows
from lineage_guard.lineage.store import first_line, no_lineage_error, redact_text, redact_url
from lineage_guard.lineage.stores.sql import (
    ADD_ENTRY,
    FETCH_ROWS,
    HOP_COLUMNS,
    INSERT_HOP,
    SUSPECT_INDEXES,
    SqlStore,
    entry_row,
)

CONNECT_TIMEOUT_S = 10
# libpq's answers that name a setting, not an outage (no SQLSTATE comes with them).
_REFUSED_SETTINGS = re.compile(
    r"invalid \w+ value|password authentication failed|role \"[^\"]*\" does not exist"
    r"|database \"[^\"]*\" does not exist|no pg_hba\.conf entry|does not support SSL"
)

# SQLSTATEs that waiting does not change: no schema to create the tables in (`search_path`
# names none that exists), no privilege, a read-only transaction or server. Exit 3, not 4.
_SETTING_STATES = frozenset({"3F000", "42501", "25006"})
# SQLSTATE classes that name a row's values, not the server: a data exception (22: a
# character the database's encoding lacks, a value out of range) or a program limit
# exceeded (54: an index row too large). The record is quarantined; waiting would not help.
_ROW_CLASSES = frozenset({"22", "54"})

_COPY = f"COPY lineage_hops ({', '.join(HOP_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
# A hop row of the entry this session inserted last: its id taken from the entry's sequence
# on the server (`currval`), so a pipelined writer need not wait for it.
_INSERT_HOP_OF_ENTRY = INSERT_HOP.replace("?", "currval('lineage_entries_id_seq')", 1).replace(
    "?", "%s"
)
# A chain's head as this store's last admissions left it, locked, or an error (division by
# zero, `_head_moved`) that aborts the transaction if another writer moved it since: checked
# without waiting for an answer.
_CHECK_HEAD = (
    "SELECT 1 / count(*) FROM (SELECT 1 FROM lineage_chains"
    " WHERE chain_id = %s AND seq = %s AND hash = %s FOR UPDATE) AS head"
)
_COPY_TYPES = [
    "int8", "int4", "text", "int8", "text", "text", "text", "text", "text", "text", "text",
    "text", "text", "bytea",
]  # fmt: skip
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS lineage_chains (
        chain_id text PRIMARY KEY,
        seq bigint NOT NULL,
        hash text NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS lineage_entries (
        id bigserial PRIMARY KEY,
        chain_id text NOT NULL,
        seq bigint NOT NULL,
        kind text NOT NULL,
        pipeline text NOT NULL,
        run_id text NOT NULL,
        at bigint NOT NULL,
        source_topic text NOT NULL,
        source_partition integer NOT NULL,
        first_offset bigint,
        last_offset bigint,
        count integer NOT NULL,
        allowed_to text,
        quarantined_to text,
        root text,
        confirms bigint,
        failed text,
        prev_hash text NOT NULL,
        hash text NOT NULL,
        UNIQUE (chain_id, seq)
    )""",
    """CREATE INDEX IF NOT EXISTS lineage_entries_confirms ON lineage_entries (chain_id, confirms)
        WHERE kind = 'delivery'""",
    "CREATE INDEX IF NOT EXISTS lineage_entries_at ON lineage_entries (at)",
    """CREATE INDEX IF NOT EXISTS lineage_entries_position
        ON lineage_entries (chain_id, run_id, first_offset)""",
    """CREATE TABLE IF NOT EXISTS lineage_hops (
        entry_id bigint NOT NULL,
        idx integer NOT NULL,
        record_id text,
        source_offset bigint NOT NULL,
        outcome text NOT NULL,
        stopped_at text,
        reasons text,
        content_class text,
        origin_env text,
        tenant_id text,
        source_system text,
        generator text,
        parents text,
        digest bytea NOT NULL,
        PRIMARY KEY (entry_id, idx)
    )""",
    # A hash index: hops are only ever looked up by equal ids, and it keeps a 4-byte hash per
    # hop where a B-tree keeps the id (37 against 79 bytes per hop). The B-tree of earlier
    # versions is replaced when a guard opens the store.
    """CREATE INDEX IF NOT EXISTS lineage_hops_record_id_hash
        ON lineage_hops USING hash (record_id)""",
    "DROP INDEX IF EXISTS lineage_hops_record_id",
    *SUSPECT_INDEXES,  # the leak query's (`queries.leaks`)
    """CREATE TABLE IF NOT EXISTS lineage_checkpoints (
        id bigserial PRIMARY KEY,
        at bigint NOT NULL,
        run_id text NOT NULL,
        heads text NOT NULL,
        key_id text NOT NULL,
        signature text NOT NULL
    )""",
]


# The web side's users, API keys and access log (`lineage.accounts`), made on first use.
_ACCOUNT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lineage_users (
        name text PRIMARY KEY,
        password_hash text NOT NULL,
        role text NOT NULL,
        tenants text,
        created_at bigint NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS lineage_api_keys (
        key_id text PRIMARY KEY,
        name text NOT NULL,
        secret_hash text NOT NULL,
        scopes text NOT NULL,
        tenants text,
        created_at bigint NOT NULL,
        revoked_at bigint
    )""",
    """CREATE TABLE IF NOT EXISTS lineage_access_log (
        id bigserial PRIMARY KEY,
        at bigint NOT NULL,
        principal text NOT NULL,
        via text NOT NULL,
        query text NOT NULL,
        records integer NOT NULL
    )""",
)


# The advisory lock signers take (`_lock_checkpoints`): a fixed 64-bit key, "lgckpt01".
CHECKPOINTS_LOCK = int.from_bytes(b"lgckpt01", "big") - 2**63


class PostgresStore(SqlStore):
    """A `LineageStore` in the PostgreSQL database that `url` (a libpq URL) names."""

    _errors = (psycopg.Error,)
    _ACCOUNT_SCHEMA = _ACCOUNT_SCHEMA
    _TABLE_EXISTS = "SELECT to_regclass(?)"
    _RULES_OF_REASONS = (
        "(SELECT jsonb_agg(DISTINCT r ->> 0 ORDER BY r ->> 0)::text"
        " FROM jsonb_array_elements(h.reasons::jsonb) r)"
    )

    def __init__(self, url: str, *, create: bool = True) -> None:
        super().__init__()
        self._dsn = url
        self._url = redact_url(url)
        self._conn: psycopg.Connection[Any] | None = None
        self._cursors = 0
        # The heads this connection's committed admissions left (`admit`: read only while
        # `_CHECK_HEAD` finds them unmoved), and those its running admissions move.
        self._heads: dict[str, ChainHead] = {}
        self._moving: dict[str, ChainHead] = {}
        with self._lock:
            conn = self._connection()
            try:
                if not create:
                    row = conn.execute("SELECT to_regclass('lineage_hops')").fetchone()
                    if row is None or row[0] is None:
                        self._drop_connection()
                        raise no_lineage_error(self._url)
                    return
                with conn.transaction():
                    # Two guards starting at once must not both create the tables.
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('lineage_guard.schema'))")
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    with conn.cursor() as cursor:  # counted from the hops once if missing
                        self._summary_in(cursor)
            except psycopg.Error as exc:
                if _least_privilege(conn, exc):
                    # a writer or reader role (`db roles`): the owner keeps the tables
                    if not self._has_summary(conn):
                        self._drop_connection()
                        raise ConfigError(
                            f"The lineage store `{self._url}` has no console summary"
                            " (`lineage_hop_summary`; it was written by an earlier"
                            " lineage-guard): open it once as the tables' owner, e.g."
                            " `lineage-guard db roles`, which counts its hops into it."
                        ) from None
                    return
                self._drop_connection()
                if self._error_class(exc) is ConfigError:
                    raise ConfigError(
                        f"The lineage store `{self._url}` cannot hold lineage:"
                        f" {redact_text(first_line(exc), self._dsn)}. Check `--lineage-store`:"
                        " its database, its `search_path` schema and the user's rights."
                    ) from None
                raise self._unavailable("open", exc) from exc

    @property
    def url(self) -> str:
        return self._url

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    def __repr__(self) -> str:
        return f"PostgresStore({self._url!r})"

    # -- the dialect ------------------------------------------------------------------------

    def _q(self, query: str) -> str:
        return query.replace("?", "%s")

    def _hops_of(self, record_ids: Sequence[str]) -> tuple[str, str, list[Any]]:
        # Each id probes the `record_id` index on its own (a LATERAL subquery that `OFFSET 0`
        # keeps the planner from flattening). An `IN (…)` list is planned from the table's
        # statistics, and a store filling in its first run has none until autovacuum analyzes
        # it: the planner then reads every hop for each lookup (the guard's parent lookups on
        # a 300,000-record run: 22 ms each, 17 % of the run's time; 1.6 ms this way).
        return (
            "unnest(?::text[]) AS wanted(id) CROSS JOIN LATERAL"
            " (SELECT * FROM lineage_hops WHERE record_id = wanted.id OFFSET 0) h",
            "TRUE",
            [list(record_ids)],
        )

    def _write(self) -> AbstractContextManager[Any]:
        return self._transaction(pipelined=False)

    def _write_pipelined(self) -> AbstractContextManager[Any]:
        # libpq's pipeline mode: statements go out without waiting for their answers until a
        # result is read (an entry's id, a chain's head) or the commit; each round trip costs
        # the writer a wait for the server process (and then for the GIL) on a busy machine.
        return self._transaction(pipelined=True)

    @contextmanager
    def _transaction(self, *, pipelined: bool) -> Iterator[Any]:
        with self._lock:
            self._moving = {}
            if not pipelined:  # it may move heads itself: read them again next time
                self._heads.clear()
            try:
                conn = self._connection()
                with (
                    _pipelined_transaction(conn) if pipelined else conn.transaction(),
                    conn.cursor() as cursor,
                ):
                    yield cursor
            except BaseException as exc:
                self._heads.clear()
                if isinstance(exc, psycopg.Error):
                    self._drop_broken()
                raise
            self._heads.update(self._moving)  # committed

    def _head_moved(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.DivisionByZero)  # `_CHECK_HEAD`'s

    def _lock_checkpoints(self, cursor: Any) -> None:
        # A transaction-level advisory lock: it needs no privilege on any table (the writer
        # role may not UPDATE or LOCK them), and the commit releases it.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (CHECKPOINTS_LOCK,))

    def _lock_head(self, cursor: Any, chain_id: str) -> ChainHead | None:
        known = self._heads.get(chain_id) if _pipelined(cursor) else None
        if known is not None:  # the head this connection left, if no one moved it since
            cursor.execute(_CHECK_HEAD, (chain_id, known.seq, known.hash))
            return known
        cursor.execute(
            "INSERT INTO lineage_chains (chain_id, seq, hash) VALUES (%s, 0, %s)"
            " ON CONFLICT (chain_id) DO NOTHING",
            (chain_id, GENESIS_HASH),
        )
        cursor.execute(
            "SELECT seq, hash FROM lineage_chains WHERE chain_id = %s FOR UPDATE", (chain_id,)
        )
        seq, digest = cursor.fetchone()
        return ChainHead(chain_id=chain_id, seq=seq, hash=digest) if seq else None

    def _lock_hops(self, cursor: Any) -> None:
        cursor.execute("LOCK TABLE lineage_hops IN SHARE MODE")  # appends wait; reads go on

    def _has_summary(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT to_regclass('lineage_hop_summary')").fetchone()
        return row is not None and row[0] is not None

    def _set_head(self, cursor: Any, entry: Entry | ChainHead) -> None:
        super()._set_head(cursor, entry)
        if _pipelined(cursor):
            self._moving[entry.chain_id] = ChainHead(
                chain_id=entry.chain_id, seq=entry.seq, hash=entry.hash
            )

    def _insert_entry(self, cursor: Any, entry: Entry, table: HopRows) -> None:
        if not _pipelined(cursor):
            super()._insert_entry(cursor, entry, table)
            return
        # Pipelined: the entry's id is not waited for (its hops take it from the sequence) and
        # the hops go as INSERTs (COPY cannot be pipelined).
        cursor.execute(self._q(ADD_ENTRY), entry_row(entry))
        cursor.executemany(_INSERT_HOP_OF_ENTRY, [row[1:] for row in table.store_rows(0)])

    def _insert_hops(self, cursor: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        with cursor.copy(_COPY) as copy:
            copy.set_types(_COPY_TYPES)
            for row in rows:
                copy.write_row(row)

    def _fetchall(self, query: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            try:
                return self._connection().execute(query, params).fetchall()
            except psycopg.Error as exc:
                self._drop_broken()
                raise self._unavailable("read", exc) from exc

    @contextmanager
    def _snapshot(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of its own in one repeatable-read, read-only transaction."""
        conn = self._connect(autocommit=False)
        try:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            yield conn
        except psycopg.Error as exc:
            raise self._unavailable("read", exc) from exc
        finally:
            conn.close()  # rolls back its read-only transaction

    def _stream(
        self, conn: psycopg.Connection[Any], query: str, params: Sequence[Any]
    ) -> Iterator[Any]:
        self._cursors += 1  # a server-side cursor: rows come FETCH_ROWS at a time
        try:
            with conn.cursor(name=f"lineage_stream_{self._cursors}") as cursor:
                cursor.itersize = FETCH_ROWS
                cursor.execute(query, params)
                yield from cursor
        except psycopg.Error as exc:
            raise self._unavailable("read", exc) from exc

    def _fetch(self, conn: psycopg.Connection[Any], query: str, params: Sequence[Any]) -> list[Any]:
        # A client-side cursor in binary: one round trip, and digests arrive as bytes rather
        # than hex text (a server-side cursor costs ~5 µs more per row).
        try:
            return conn.execute(query, params, binary=True).fetchall()
        except psycopg.Error as exc:
            raise self._unavailable("read", exc) from exc

    # -- connections ------------------------------------------------------------------------

    def _connect(self, *, autocommit: bool) -> psycopg.Connection[Any]:
        options: dict[str, Any] = {}
        if "connect_timeout" not in self._dsn:
            options["connect_timeout"] = CONNECT_TIMEOUT_S
        # Python's text goes out as UTF-8 whatever the database's encoding: the server then
        # names a character its encoding lacks (SQLSTATE 22P05, that row's fault).
        options["client_encoding"] = "utf8"
        try:
            return psycopg.connect(self._dsn, autocommit=autocommit, **options)
        except psycopg.ProgrammingError as exc:  # a malformed URL or an unknown option
            raise ConfigError(
                f"Bad lineage store URL `{self._url}`: {redact_text(first_line(exc), self._dsn)}."
                " Use `postgresql://user@host:port/database`."
            ) from None
        except psycopg.Error as exc:
            if _REFUSED_SETTINGS.search(str(exc)):  # waiting would not help: exit 3 at once
                raise ConfigError(
                    f"The lineage store `{self._url}` refused the connection:"
                    f" {redact_text(first_line(exc), self._dsn)}. Check `--lineage-store`."
                ) from None
            raise self._unavailable("reach", exc) from None

    def _connection(self) -> psycopg.Connection[Any]:
        """The shared connection (autocommit), reopened when the last one broke."""
        self._drop_broken()
        if self._conn is None:
            self._conn = self._connect(autocommit=True)
        return self._conn

    def _drop_broken(self) -> None:
        """Forget the shared connection if it broke, so the next call reconnects."""
        if self._conn is not None and (self._conn.broken or self._conn.closed):
            self._drop_connection()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _error_class(self, exc: BaseException) -> type[LineageGuardError]:
        state = getattr(exc, "sqlstate", None) or ""
        if state in _SETTING_STATES:
            return ConfigError
        if state[:2] in _ROW_CLASSES:
            return RowRefusedError
        return ServiceUnavailableError

    def _unavailable(self, action: str, exc: BaseException) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"Cannot {action} the lineage store `{self._url}`:"
            f" {redact_text(first_line(exc), self._dsn)}."
            " Check `--lineage-store` and that PostgreSQL is running."
        )


def _pipelined(cursor: Any) -> bool:
    return bool(cursor.connection.pgconn.pipeline_status != pq.PipelineStatus.OFF)


@contextmanager
def _pipelined_transaction(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A transaction in pipeline mode whose BEGIN and COMMIT go with its statements: it waits
    for the server only where a result is read and once at the end, for the COMMIT's answer
    (psycopg's `transaction()` in a pipeline waits after BEGIN and before COMMIT as well). A
    statement that failed, or an exception in the block, skips the COMMIT (the server skips
    what follows a failed statement up to the pipeline's sync) and the transaction is rolled
    back."""
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            yield
            conn.execute("COMMIT")
    finally:
        if not conn.broken and conn.info.transaction_status != pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")


def _least_privilege(conn: psycopg.Connection[Any], exc: psycopg.Error) -> bool:
    """Whether creating the tables was refused only for want of a right (SQLSTATE 42501) on a
    store whose tables exist: a role made by `lineage-guard db roles` may not create them."""
    if getattr(exc, "sqlstate", None) != "42501" or conn.broken or conn.closed:
        return False
    try:
        row = conn.execute("SELECT to_regclass('lineage_hops')").fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] is not None
