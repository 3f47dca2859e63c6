"""The embedded lineage store: one SQLite file (stdlib `sqlite3`), no server.

WAL mode, so audits read while the guard writes. A write is one `BEGIN IMMEDIATE` transaction:
it takes SQLite's write lock before reading the chain's head, so two writers (threads or
processes) can never link two entries to the same predecessor. Hop rows live in a
`WITHOUT ROWID` table clustered by (entry, index), so a row costs its values plus the
record-id index, and nothing else.
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
from lineage_guard.lineage.private import create_private_file, private_dir
from lineage_guard.lineage.store import first_line, no_lineage_error
from lineage_guard.lineage.stores.sql import FETCH_ROWS, INSERT_HOP, SqlStore

SCHEMA_VERSION = 2  # 1: one row per event (before hops); not readable by this version
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
CREATE INDEX IF NOT EXISTS lineage_hops_record_id ON lineage_hops (record_id);
CREATE TABLE IF NOT EXISTS lineage_checkpoints (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    heads TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
"""


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
            if version != SCHEMA_VERSION and not (create and version == 0):
                self._conn.close()
                if version and version != SCHEMA_VERSION:
                    from lineage_guard.lineage.errors import ConfigError

                    raise ConfigError(
                        f"The lineage store `{self._url}` has schema version {version}; this"
                        f" lineage-guard reads version {SCHEMA_VERSION}. Use a new store file."
                    )
                raise no_lineage_error(self._url)
            if version == 0:
                self._conn.executescript(
                    f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                )
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._unavailable("open", exc) from exc

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
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _lock_head(self, cursor: Any, chain_id: str) -> ChainHead | None:
        # BEGIN IMMEDIATE already holds the database's write lock.
        row = cursor.execute(
            "SELECT seq, hash FROM lineage_chains WHERE chain_id = ?", (chain_id,)
        ).fetchone()
        return ChainHead(chain_id=chain_id, seq=row[0], hash=row[1]) if row else None

    def _insert_hops(self, cursor: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        cursor.executemany(INSERT_HOP, rows)

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
