"""The shared lineage store: PostgreSQL through psycopg 3.

An append is one transaction: it locks the chain's head row (`SELECT … FOR UPDATE`, creating
the row first for a new chain), links the events, writes them with one binary `COPY` and moves
the head. Writers on other connections or machines wait for the lock, so a chain never forks.

The tables live in the first schema of the connection's `search_path`; choose another with
the libpq option in the URL: `postgresql://…/db?options=-csearch_path%3Dlineage`.

A broken connection (server restarted, network cut) is dropped and reopened on the next call,
so a guard that keeps retrying resumes once the database is back.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg.types.json import Jsonb

from lineage_guard.lineage.chain import ChainHead, Verification, first_break, head_after, link
from lineage_guard.lineage.errors import ConfigError, ServiceUnavailableError
from lineage_guard.lineage.events import GENESIS_HASH, Decision, LineageEvent, Stage, StoredEvent
from lineage_guard.lineage.store import (
    EVENT_COLUMNS,
    event_row,
    first_line,
    no_lineage_error,
    order_key,
    read_row,
    redact_text,
    redact_url,
    stored_from_row,
)

CONNECT_TIMEOUT_S = 10
# libpq's answers that name a setting, not an outage (no SQLSTATE comes with them).
_REFUSED_SETTINGS = re.compile(
    r"invalid \w+ value|password authentication failed|role \"[^\"]*\" does not exist"
    r"|database \"[^\"]*\" does not exist|no pg_hba\.conf entry|does not support SSL"
)
FETCH_ROWS = 5000  # rows per round trip when streaming
ANY_CHUNK = 1000  # record ids per `= ANY(…)` query

_COLUMNS = ", ".join(EVENT_COLUMNS)
_SELECT = f"SELECT {_COLUMNS} FROM lineage_events"
_COPY = f"COPY lineage_events ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = [
    "text",  # chain_id
    "int8",  # seq
    "text",  # record_id
    "text",  # stage
    "text",  # pipeline
    "text",  # run_id
    "timestamptz",  # at
    "text",  # decision
    "jsonb",  # reasons
    "text",  # content_class
    "text",  # origin_env
    "text",  # tenant_id
    "text",  # source_system
    "text",  # generator
    "text[]",  # parent_record_ids
    "text",  # source_topic
    "int4",  # source_partition
    "int8",  # source_offset
    "text",  # destination
    "text",  # prev_hash
    "text",  # hash
]
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS lineage_chains (
        chain_id text PRIMARY KEY,
        seq bigint NOT NULL,
        hash text NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS lineage_events (
        chain_id text NOT NULL,
        seq bigint NOT NULL,
        record_id text,
        stage text NOT NULL,
        pipeline text NOT NULL,
        run_id text NOT NULL,
        at timestamptz NOT NULL,
        decision text NOT NULL,
        reasons jsonb NOT NULL,
        content_class text,
        origin_env text,
        tenant_id text,
        source_system text,
        generator text,
        parent_record_ids text[] NOT NULL,
        source_topic text NOT NULL,
        source_partition integer NOT NULL,
        source_offset bigint NOT NULL,
        destination text,
        prev_hash text NOT NULL,
        hash text NOT NULL,
        PRIMARY KEY (chain_id, seq)
    )""",
    "CREATE INDEX IF NOT EXISTS lineage_events_record_id ON lineage_events (record_id)",
    "CREATE INDEX IF NOT EXISTS lineage_events_at ON lineage_events (at)",
]
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


class PostgresStore:
    """A `LineageStore` in the PostgreSQL database that `url` (a libpq URL) names."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self._dsn = url
        self._url = redact_url(url)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        with self._lock:
            conn = self._connection()
            try:
                if not create:
                    row = conn.execute("SELECT to_regclass('lineage_events')").fetchone()
                    if row is None or row[0] is None:
                        self._drop_connection()
                        raise no_lineage_error(self._url)
                    return
                with conn.transaction():
                    # Two guards starting at once must not both create the tables.
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('lineage_guard.schema'))")
                    for statement in _SCHEMA:
                        conn.execute(statement)
            except psycopg.Error as exc:
                self._drop_connection()
                raise self._unavailable("open", exc) from exc

    @property
    def url(self) -> str:
        return self._url

    def append(self, events: Sequence[LineageEvent], *, chain_id: str) -> None:
        if not events:
            return
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cursor:
                    cursor.execute(
                        "INSERT INTO lineage_chains (chain_id, seq, hash) VALUES (%s, 0, %s)"
                        " ON CONFLICT (chain_id) DO NOTHING",
                        (chain_id, GENESIS_HASH),
                    )
                    cursor.execute(
                        "SELECT seq, hash FROM lineage_chains WHERE chain_id = %s FOR UPDATE",
                        (chain_id,),
                    )
                    seq, digest = cursor.fetchone() or (0, GENESIS_HASH)
                    head = ChainHead(chain_id=chain_id, seq=seq, hash=digest)
                    stored = link(events, chain_id=chain_id, head=head)
                    with cursor.copy(_COPY) as copy:
                        copy.set_types(_COPY_TYPES)
                        for item in stored:
                            copy.write_row(_row(item))
                    new_head = head_after(stored, chain_id=chain_id, head=head)
                    cursor.execute(
                        "UPDATE lineage_chains SET seq = %s, hash = %s WHERE chain_id = %s",
                        (new_head.seq, new_head.hash, chain_id),
                    )
            except psycopg.Error as exc:
                self._drop_broken()
                raise ServiceUnavailableError(
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
        query = f"{_SELECT} WHERE record_id = ANY(%s)"
        filters: list[Any] = []
        if stage is not None:
            query += " AND stage = %s"
            filters.append(str(stage))
        if decisions is not None:
            query += " AND decision = ANY(%s)"
            filters.append([str(decision) for decision in decisions])
        found: list[StoredEvent] = []
        for start in range(0, len(ids), ANY_CHUNK):
            params = [ids[start : start + ANY_CHUNK], *filters]
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
            where.append("at >= %s")
            params.append(since)
        if until is not None:
            where.append("at < %s")
            params.append(until)
        if stage is not None:
            where.append("stage = %s")
            params.append(str(stage))
        if decision is not None:
            where.append("decision = %s")
            params.append(str(decision))
        query = _SELECT + (f" WHERE {' AND '.join(where)}" if where else "")
        query += " ORDER BY at, chain_id, seq"
        with self._reader() as conn:
            for row in self._stream(conn, query, params):
                yield stored_from_row(row)

    def chains(self) -> Iterator[str]:
        return iter([row[0] for row in self._fetchall(_CHAIN_IDS, [])])

    def head(self, chain_id: str) -> ChainHead | None:
        rows = self._fetchall(
            "SELECT seq, hash FROM lineage_chains WHERE chain_id = %s", [chain_id]
        )
        return ChainHead(chain_id=chain_id, seq=rows[0][0], hash=rows[0][1]) if rows else None

    def verify(self, chain_id: str | None = None) -> Verification:
        with self._reader() as conn:
            # One snapshot for heads and events, even while the guard appends.
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            heads_query = "SELECT chain_id, seq, hash FROM lineage_chains"
            events_query = _SELECT
            params: list[Any] = []
            if chain_id is not None:
                heads_query += " WHERE chain_id = %s"
                events_query += " WHERE chain_id = %s"
                params.append(chain_id)
            heads = {
                row[0]: ChainHead(chain_id=row[0], seq=row[1], hash=row[2])
                for row in self._stream(conn, heads_query, params)
            }
            rows = self._stream(conn, events_query + " ORDER BY chain_id, seq", params)
            return first_break(map(read_row, rows), heads)

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

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
        return f"PostgresStore({self._url!r})"

    # -- connections ------------------------------------------------------------------------

    def _connect(self, *, autocommit: bool) -> psycopg.Connection[Any]:
        options: dict[str, Any] = {}
        if "connect_timeout" not in self._dsn:
            options["connect_timeout"] = CONNECT_TIMEOUT_S
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

    @contextmanager
    def _reader(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of its own for a long read, so streaming never holds up appends."""
        conn = self._connect(autocommit=False)
        try:
            yield conn
        finally:
            conn.close()  # rolls back its read-only transaction

    def _fetchall(self, query: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            try:
                return self._connection().execute(query, params).fetchall()
            except psycopg.Error as exc:
                self._drop_broken()
                raise self._unavailable("read", exc) from exc

    def _stream(
        self, conn: psycopg.Connection[Any], query: str, params: Sequence[Any]
    ) -> Iterator[Any]:
        try:
            with conn.cursor(name="lineage_stream") as cursor:
                cursor.itersize = FETCH_ROWS
                cursor.execute(query, params)
                yield from cursor
        except psycopg.Error as exc:
            raise self._unavailable("read", exc) from exc

    def _unavailable(self, action: str, exc: BaseException) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"Cannot {action} the lineage store `{self._url}`:"
            f" {redact_text(first_line(exc), self._dsn)}."
            " Check `--lineage-store` and that PostgreSQL is running."
        )


def _row(stored: StoredEvent) -> tuple[Any, ...]:
    event = stored.event
    return event_row(
        stored,
        at=event.at,
        reasons=Jsonb([reason.to_dict() for reason in event.reasons]),
        parents=list(event.parent_record_ids),
    )
