"""The embedded lineage store: one SQLite file (stdlib `sqlite3`), no server.

WAL mode, so audits read while the guard writes. A write is one `BEGIN IMMEDIATE` transaction:
it takes SQLite's write lock before reading the chain's head, so two writers (threads or
processes) can never link two entries to the same predecessor. Hop rows live in a
`WITHOUT ROWID` table clustered by (entry, index): appended at its right edge.

Hops are found by record id through `record_key` (the first 8 bytes of the id's SHA-256, as a
signed integer) in three small `WITHOUT ROWID` tables of (key, entry, index), levels of a
log-structured index: each append adds its keys to level 0; a level that holds
`LEVEL_ROWS` keys is merged into the next one in key order, then emptied. A single index on
random ids would take each append's keys into pages all over a tree larger than any cache,
so an append would cost more as the store grows (2.6 times from 100,000 to 10 million hops);
merged in order, a page is written once per merge rather than once per key. A lookup asks
each level for the key, then keeps the rows whose `record_id` is the one asked for. Version 2
stores (one `record_id` index) are read as they are, and converted when opened to write.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lineage_guard.lineage.chain import ChainHead
from lineage_guard.lineage.errors import (
    ConfigError,
    LineageGuardError,
    RowRefusedError,
    ServiceUnavailableError,
)
from lineage_guard.lineage.hashes import record_key, record_keys
from lineage_guard.lineage.private import create_private_file, private_dir
from lineage_guard.lineage.store import first_line, no_lineage_error
from lineage_guard.lineage.stores.sql import FETCH_ROWS, INSERT_HOP, SUSPECT_INDEXES, SqlStore

SCHEMA_VERSION = 3  # 2: a `record_id` index (read as is; converted to write); 1: not readable
KEY_LEVELS = ("lineage_hop_keys_0", "lineage_hop_keys_1", "lineage_hop_keys_2")
LEVEL_ROWS = (20_000, 400_000)  # keys a level holds before it is merged into the next one
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another one's transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lineage_chains (
    chain_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS lineage_entries (
    id INTEGER PRIMARY KEY,
    chain_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    run_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    source_topic TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    first_offset INTEGER,
    last_offset INTEGER,
    count INTEGER NOT NULL,
    allowed_to TEXT,
    quarantined_to TEXT,
    root TEXT,
    confirms INTEGER,
    failed TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS lineage_entries_chain_seq ON lineage_entries (chain_id, seq);
CREATE INDEX IF NOT EXISTS lineage_entries_confirms ON lineage_entries (chain_id, confirms)
    WHERE kind = 'delivery';
CREATE INDEX IF NOT EXISTS lineage_entries_at ON lineage_entries (at);
CREATE INDEX IF NOT EXISTS lineage_entries_position
    ON lineage_entries (chain_id, run_id, first_offset);
CREATE TABLE IF NOT EXISTS lineage_hops (
    entry_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    record_id TEXT,
    source_offset INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    stopped_at TEXT,
    reasons TEXT,
    content_class TEXT,
    origin_env TEXT,
    tenant_id TEXT,
    source_system TEXT,
    generator TEXT,
    parents TEXT,
    digest BLOB NOT NULL,
    PRIMARY KEY (entry_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lineage_checkpoints (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    heads TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
"""
_KEYS_SCHEMA = "".join(
    f"CREATE TABLE IF NOT EXISTS {level} (record_key INTEGER NOT NULL, entry_id INTEGER NOT NULL,"
    " idx INTEGER NOT NULL, PRIMARY KEY (record_key, entry_id, idx)) WITHOUT ROWID;\n"
    for level in KEY_LEVELS
)


# The web side's users, API keys and access log (`lineage.accounts`), made on first use.
_ACCOUNT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lineage_users (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        tenants TEXT,
        created_at INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS lineage_api_keys (
        key_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        tenants TEXT,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS lineage_access_log (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        principal TEXT NOT NULL,
        via TEXT NOT NULL,
        query TEXT NOT NULL,
        records INTEGER NOT NULL
    )""",
)


class SqliteStore(SqlStore):
    """A `LineageStore` in the SQLite file at `path` (created, with its folders, if missing)."""

    _errors = (sqlite3.Error,)
    _ACCOUNT_SCHEMA = _ACCOUNT_SCHEMA
    _TABLE_EXISTS = "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?"
    _RULES_OF_REASONS = (
        "(SELECT json_group_array(DISTINCT json_extract(value, '$[0]')) FROM json_each(h.reasons))"
    )

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        super().__init__()
        self._path = Path(path)
        self._url = f"sqlite:///{path}"
        if not create and not self._path.is_file():
            raise no_lineage_error(self._url)
        try:
            if create:  # a new store, and its new folders, only for its owner
                private_dir(self._path.parent)
                create_private_file(self._path)
        except OSError as exc:
            raise self._unavailable("open", exc) from exc
        self._conn = self._connect()
        try:
            if create:  # audits only read: they may work on a read-only copy
                self._conn.execute("PRAGMA journal_mode=WAL")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in _READABLE and not (create and version == 0):
                self._conn.close()
                if version:
                    raise ConfigError(
                        f"The lineage store `{self._url}` has schema version {version}; this"
                        f" lineage-guard reads versions {_READABLE[0]} to {SCHEMA_VERSION}."
                        " Use a new store file."
                    )
                raise no_lineage_error(self._url)
            if version == 0:
                self._conn.executescript(
                    f"BEGIN IMMEDIATE; {_SCHEMA} {_KEYS_SCHEMA}"
                    f" PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                )
            elif version < SCHEMA_VERSION and create:
                self._convert()
            if create:  # the leak query's indexes, made once in a store written before them
                self._conn.executescript(";".join(SUSPECT_INDEXES))
            self._keyed = create or version == SCHEMA_VERSION
            # Keys in each level but the last, as this store object counts them (other writers'
            # keys are counted when it reopens: a level may then hold more before its merge).
            self._level_rows: list[int] | None = None
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._unavailable("open", exc) from exc
        if create:  # the console's summary, counted from the hops once in a store without it
            try:
                self.fill_summary()
            except LineageGuardError:
                self._conn.close()
                raise

    def _convert(self) -> None:
        """Version 2 to 3, in one transaction: the keys of every hop into the last level,
        and the `record_id` index dropped."""
        conn = self._conn
        conn.create_function("lineage_record_key", 1, record_key, deterministic=True)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                for statement in _KEYS_SCHEMA.splitlines():
                    conn.execute(statement)
                conn.execute(
                    f"INSERT INTO {KEY_LEVELS[-1]} SELECT lineage_record_key(record_id),"
                    " entry_id, idx FROM lineage_hops WHERE record_id IS NOT NULL ORDER BY 1, 2, 3"
                )
                conn.execute("DROP INDEX IF EXISTS lineage_hops_record_id")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @property
    def url(self) -> str:
        return self._url

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self._path)!r})"

    # -- the dialect ------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn.cursor()
                conn.execute("COMMIT")
            except BaseException:
                self._level_rows = None  # counted again at the next append
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _lock_checkpoints(self, cursor: Any) -> None:
        pass  # BEGIN IMMEDIATE already holds the database's write lock

    def _lock_hops(self, cursor: Any) -> None:
        pass  # BEGIN IMMEDIATE already holds the database's write lock

    def _lock_head(self, cursor: Any, chain_id: str) -> ChainHead | None:
        # BEGIN IMMEDIATE already holds the database's write lock.
        row = cursor.execute(
            "SELECT seq, hash FROM lineage_chains WHERE chain_id = ?", (chain_id,)
        ).fetchone()
        return ChainHead(chain_id=chain_id, seq=row[0], hash=row[1]) if row else None

    def _insert_hops(self, cursor: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        cursor.executemany(INSERT_HOP, rows)
        keyed = [row for row in rows if row[2] is not None]
        keys = zip(
            record_keys([row[2] for row in keyed]),
            (row[0] for row in keyed),
            (row[1] for row in keyed),
            strict=True,
        )
        cursor.executemany(f"INSERT INTO {KEY_LEVELS[0]} VALUES (?, ?, ?)", keys)
        if self._level_rows is None:  # first append since the store was opened, or a failure
            self._level_rows = [
                cursor.execute(f"SELECT count(*) FROM {level}").fetchone()[0]
                for level in KEY_LEVELS[:-1]
            ]
        else:
            self._level_rows[0] += len(keyed)
        for i, limit in enumerate(LEVEL_ROWS):
            if self._level_rows[i] >= limit:  # merged in key order: each page written once
                into, level = KEY_LEVELS[i + 1], KEY_LEVELS[i]
                cursor.execute(f"INSERT INTO {into} SELECT * FROM {level} ORDER BY 1, 2, 3")
                cursor.execute(f"DELETE FROM {level}")
                if i + 1 < len(self._level_rows):
                    self._level_rows[i + 1] += self._level_rows[i]
                self._level_rows[i] = 0

    def _hops_of(self, record_ids: Sequence[str]) -> tuple[str, str, list[Any]]:
        if not self._keyed:  # a version 2 store opened to read
            return super()._hops_of(record_ids)
        marks = ", ".join("?" for _ in record_ids)
        found = " UNION ALL ".join(
            f"SELECT entry_id, idx FROM {level} WHERE record_key IN ({marks})"
            for level in KEY_LEVELS
        )
        keys = record_keys(record_ids)
        return (
            f"({found}) k CROSS JOIN lineage_hops h ON h.entry_id = k.entry_id AND h.idx = k.idx",
            f"h.record_id IN ({marks})",
            keys * len(KEY_LEVELS) + list(record_ids),
        )

    def _fetchall(self, query: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(query, params).fetchall()
            except sqlite3.Error as exc:
                raise self._unavailable("read", exc) from exc

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own in one read transaction, so long reads see one snapshot
        and never hold up appends."""
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            yield conn
        except sqlite3.Error as exc:
            raise self._unavailable("read", exc) from exc
        finally:
            conn.close()  # also ends its read transaction

    def _stream(self, conn: sqlite3.Connection, query: str, params: Sequence[Any]) -> Iterator[Any]:
        try:
            cursor = conn.execute(query, params)
            while rows := cursor.fetchmany(FETCH_ROWS):
                yield from rows
        except sqlite3.Error as exc:
            raise self._unavailable("read", exc) from exc

    def _fetch(self, conn: sqlite3.Connection, query: str, params: Sequence[Any]) -> list[Any]:
        try:
            return conn.execute(query, params).fetchall()
        except sqlite3.Error as exc:
            raise self._unavailable("read", exc) from exc

    def _connect(self) -> sqlite3.Connection:
        try:
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE … COMMIT).
            return sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._unavailable("open", exc) from exc

    def _error_class(self, exc: BaseException) -> type[LineageGuardError]:
        if _is_setting(exc):
            return ConfigError
        if getattr(exc, "sqlite_errorname", "") in _ROW_ERRORS:
            return RowRefusedError
        return ServiceUnavailableError

    def _unavailable(self, action: str, exc: BaseException) -> LineageGuardError:
        return self._error_class(exc)(
            f"Cannot {action} the lineage store `{self._url}`: {first_line(exc)}."
            " Check `--lineage-store` and that the file is a readable SQLite database."
        )


_READABLE = (2, SCHEMA_VERSION)


# SQLite's answers that no amount of waiting changes: a read-only or non-database file, a path
# that cannot be opened. They are configuration errors (exit 3), not outages to retry.
_SETTING_ERRORS = ("SQLITE_READONLY", "SQLITE_NOTADB", "SQLITE_CANTOPEN", "SQLITE_PERM")


# What SQLite says of a row too large for it (past `SQLITE_MAX_LENGTH`): that row's fault.
_ROW_ERRORS = ("SQLITE_TOOBIG",)


def _is_setting(exc: BaseException) -> bool:
    if isinstance(exc, OSError):  # the store's folder or file cannot be made
        return exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST)
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(_SETTING_ERRORS)
