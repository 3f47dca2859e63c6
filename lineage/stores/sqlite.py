"""The embedded lineage store: one SQLite file (stdlib `sqlite3`), no server.

WAL mode, so audits read while the guard writes. An append is one `BEGIN IMMEDIATE`
transaction: it takes SQLite's write lock before reading the chain's head, so two writers
(threads or processes) can never link two events to the same predecessor. Times are stored as
fixed-width ISO-8601 UTC text (`2026-11-27T12:00:00.000Z`), which sorts in time order; reasons
and parent ids as compact JSON text.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from lineage_guard.lineage.chain import ChainHead, Verification, first_break, head_after, link
from lineage_guard.lineage.errors import ConfigError, ServiceUnavailableError
from lineage_guard.lineage.events import Decision, LineageEvent, Stage, StoredEvent, format_time
from lineage_guard.lineage.private import create_private_file, private_dir
from lineage_guard.lineage.store import (
    EVENT_COLUMNS,
    event_row,
    first_line,
    no_lineage_error,
    order_key,
    parents_json,
    read_row,
    reasons_json,
    stored_from_row,
)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another one's transaction
FETCH_ROWS = 5000  # rows per fetch when streaming
IN_CHUNK = 500  # record ids per `IN (…)` query

_COLUMNS = ", ".join(EVENT_COLUMNS)
_SELECT = f"SELECT {_COLUMNS} FROM lineage_events"
_INSERT = (
    f"INSERT INTO lineage_events ({_COLUMNS}) VALUES ({', '.join('?' for _ in EVENT_COLUMNS)})"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS lineage_chains (
    chain_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS lineage_events (
    chain_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    record_id TEXT,
    stage TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    run_id TEXT NOT NULL,
    at TEXT NOT NULL,
    decision TEXT NOT NULL,
    reasons TEXT NOT NULL,
    content_class TEXT,
    origin_env TEXT,
    tenant_id TEXT,
    source_system TEXT,
    generator TEXT,
    parent_record_ids TEXT NOT NULL,
    source_topic TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset INTEGER NOT NULL,
    destination TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS lineage_events_chain_seq ON lineage_events (chain_id, seq);
CREATE INDEX IF NOT EXISTS lineage_events_record_id ON lineage_events (record_id);
CREATE INDEX IF NOT EXISTS lineage_events_at ON lineage_events (at);
"""
# The chain ids of all events without reading them all: one index probe per chain.
_CHAIN_IDS = """
WITH RECURSIVE ids(id) AS (
    SELECT min(chain_id) FROM lineage_events
    UNION ALL
    SELECT (SELECT min(chain_id) FROM lineage_events WHERE chain_id > ids.id)
    FROM ids WHERE ids.id IS NOT NULL
)
SELECT id FROM ids WHERE id IS NOT NULL
UNION
SELECT chain_id FROM lineage_chains
ORDER BY 1
"""


class SqliteStore:
    """A `LineageStore` in the SQLite file at `path` (created, with its folders, if missing)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self._path = Path(path)
        self._url = f"sqlite:///{path}"
        self._lock = threading.Lock()
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
            if version < SCHEMA_VERSION and not create:
                self._conn.close()
                raise no_lineage_error(self._url)
            if version < SCHEMA_VERSION:
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

    def append(self, events: Sequence[LineageEvent], *, chain_id: str) -> None:
        if not events:
            return
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute(
                        "SELECT seq, hash FROM lineage_chains WHERE chain_id = ?", (chain_id,)
                    ).fetchone()
                    head = ChainHead(chain_id=chain_id, seq=row[0], hash=row[1]) if row else None
                    stored = link(events, chain_id=chain_id, head=head)
                    conn.executemany(_INSERT, map(_row, stored))
                    new_head = head_after(stored, chain_id=chain_id, head=head)
                    conn.execute(
                        "INSERT INTO lineage_chains (chain_id, seq, hash) VALUES (?, ?, ?)"
                        " ON CONFLICT (chain_id) DO UPDATE SET seq = excluded.seq,"
                        " hash = excluded.hash",
                        (chain_id, new_head.seq, new_head.hash),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                error = ConfigError if _is_setting(exc) else ServiceUnavailableError
                raise error(
                    f"Cannot write {len(events)} lineage events to chain `{chain_id}` in"
                    f" `{self._url}`: {first_line(exc)}. Nothing of this batch was written."
                ) from exc

    def trace(self, record_id: str) -> list[StoredEvent]:
        return self.trace_many([record_id])

    def trace_many(
        self,
        record_ids: Collection[str],
        *,
        stage: Stage | None = None,
        decisions: Collection[Decision] | None = None,
    ) -> list[StoredEvent]:
        ids = list(dict.fromkeys(record_ids))
        found: list[StoredEvent] = []
        for start in range(0, len(ids), IN_CHUNK):
            chunk = ids[start : start + IN_CHUNK]
            query = f"{_SELECT} WHERE record_id IN ({', '.join('?' for _ in chunk)})"
            params: list[Any] = list(chunk)
            if stage is not None:
                query += " AND stage = ?"
                params.append(str(stage))
            if decisions is not None:
                query += f" AND decision IN ({', '.join('?' for _ in decisions) or 'NULL'})"
                params.extend(str(decision) for decision in decisions)
            found.extend(map(stored_from_row, self._fetchall(query, params)))
        return sorted(found, key=order_key)

    def events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        stage: Stage | None = None,
        decision: Decision | None = None,
    ) -> Iterator[StoredEvent]:
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("at >= ?")
            params.append(format_time(since))
        if until is not None:
            where.append("at < ?")
            params.append(format_time(until))
        if stage is not None:
            where.append("stage = ?")
            params.append(str(stage))
        if decision is not None:
            where.append("decision = ?")
            params.append(str(decision))
        query = _SELECT + (f" WHERE {' AND '.join(where)}" if where else "")
        query += " ORDER BY at, chain_id, seq"
        with self._reader() as conn:
            for row in self._stream(conn, query, params):
                yield stored_from_row(row)

    def chains(self) -> Iterator[str]:
        return iter([row[0] for row in self._fetchall(_CHAIN_IDS, [])])

    def head(self, chain_id: str) -> ChainHead | None:
        rows = self._fetchall("SELECT seq, hash FROM lineage_chains WHERE chain_id = ?", [chain_id])
        return ChainHead(chain_id=chain_id, seq=rows[0][0], hash=rows[0][1]) if rows else None

    def verify(self, chain_id: str | None = None) -> Verification:
        with self._reader() as conn:
            # One read transaction: heads and events from the same snapshot, even while the
            # guard appends.
            conn.execute("BEGIN")
            heads_query = "SELECT chain_id, seq, hash FROM lineage_chains"
            events_query = _SELECT
            params: list[Any] = []
            if chain_id is not None:
                heads_query += " WHERE chain_id = ?"
                events_query += " WHERE chain_id = ?"
                params.append(chain_id)
            heads = {
                row[0]: ChainHead(chain_id=row[0], seq=row[1], hash=row[2])
                for row in self._stream(conn, heads_query, params)
            }
            rows = self._stream(conn, events_query + " ORDER BY chain_id, seq", params)
            return first_break(map(read_row, rows), heads)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self._path)!r})"

    # -- connections ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE … COMMIT).
            return sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._unavailable("open", exc) from exc

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own for a long read, so streaming never holds up appends."""
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()  # also ends its read transaction, if any

    def _fetchall(self, query: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(query, params).fetchall()
            except sqlite3.Error as exc:
                raise self._unavailable("read", exc) from exc

    def _stream(self, conn: sqlite3.Connection, query: str, params: Sequence[Any]) -> Iterator[Any]:
        try:
            cursor = conn.execute(query, params)
            while rows := cursor.fetchmany(FETCH_ROWS):
                yield from rows
        except sqlite3.Error as exc:
            raise self._unavailable("read", exc) from exc

    def _unavailable(
        self, action: str, exc: BaseException
    ) -> ServiceUnavailableError | ConfigError:
        error = ConfigError if _is_setting(exc) else ServiceUnavailableError
        return error(
            f"Cannot {action} the lineage store `{self._url}`: {first_line(exc)}."
            " Check `--lineage-store` and that the file is a readable SQLite database."
        )


# SQLite's answers that no amount of waiting changes: a read-only or non-database file, a path
# that cannot be opened. They are configuration errors (exit 3), not outages to retry.
_SETTING_ERRORS = ("SQLITE_READONLY", "SQLITE_NOTADB", "SQLITE_CANTOPEN", "SQLITE_PERM")


def _is_setting(exc: BaseException) -> bool:
    if isinstance(exc, OSError):  # the store's folder or file cannot be made
        return exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST)
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(_SETTING_ERRORS)


def _row(stored: StoredEvent) -> tuple[Any, ...]:
    return event_row(
        stored,
        at=format_time(stored.event.at),
        reasons=reasons_json(stored),
        parents=parents_json(stored),
    )
