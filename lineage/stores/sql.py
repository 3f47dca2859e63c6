"""What both SQL stores share: the tables, the queries, reading rows back, and verification.

Four tables, the same in SQLite and PostgreSQL (times as epoch milliseconds, lists as compact
JSON text, digests as raw bytes), so tampering can be shown with plain SQL on either:

- `lineage_entries`: one row per chain entry (a written batch of hops, or a batch's delivery
  facts), with its link hash (`lineage.chain`);
- `lineage_hops`: one row per record per pass through a guard, keyed by (entry, index);
- `lineage_chains`: each chain's head;
- `lineage_checkpoints`: signed checkpoints of the heads (`lineage.checkpoints`);

the console's summary (`SUMMARY_SCHEMA`: counts, not evidence; the hops are the evidence):

- `lineage_hop_summary`: hops counted per (hour, chain, outcome, stopped_at, content
  class, tenant, rules), added to by each append in the same transaction as its hops;
- `lineage_leak_checks` and `lineage_leak_counts`: each leak count the console made (when,
  up to which entry, how many per tenant);

and, for the gateway (`web.gateway`), `gateway_answers`: each admit request's answer under its
client's `Idempotency-Key`, created when first used.

A subclass supplies the connection handling, the write transaction with its lock on the
chain's head, the bulk insert of hop rows, and how the hops of given record ids are found
(PostgreSQL: an index on `record_id`; SQLite: its record-key levels, `stores/sqlite.py`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from operator import itemgetter
from types import TracebackType
from typing import Any, Self

from lineage_guard.lineage.accounts import AccessRecord, ApiKeyRecord, UserRecord
from lineage_guard.lineage.bounds import lookup_ids, stored_id
from lineage_guard.lineage.chain import (
    GENESIS_HASH,
    BreakKind,
    BrokenLink,
    ChainHead,
    Entry,
    EntryKind,
    Failure,
    UnreadableRow,
    Verification,
    check_entry,
    check_held_heads,
    check_signed_heads,
    delivery_entry,
    hops_entry,
    verify_chain,
)
from lineage_guard.lineage.checkpoints import Checkpoint, is_signed_by, key_id, read_envelope
from lineage_guard.lineage.errors import (
    LineageGuardError,
    RowRefusedError,
    ServiceUnavailableError,
    UnusableInputError,
)
from lineage_guard.lineage.events import Decision, Reason, Stage, StoredEvent
from lineage_guard.lineage.hops import (
    Delivery,
    Hop,
    HopBatch,
    HopRows,
    Outcome,
    StoredHop,
    compact_json,
    stored_leaf,
)
from lineage_guard.lineage.proofs import BatchTrees
from lineage_guard.lineage.store import (
    HopCount,
    LeakCheck,
    RunCount,
    RunSummary,
    first_line,
    order_key,
)

log = logging.getLogger(__name__)

IN_CHUNK = 500  # record ids per `IN (…)` query
FETCH_ROWS = 5000  # rows per fetch when streaming
Heads = dict[str, ChainHead | None]  # chain id → its head, locked by a write transaction

ENTRY_COLUMNS = (
    "chain_id", "seq", "kind", "pipeline", "run_id", "at", "source_topic", "source_partition",
    "first_offset", "last_offset", "count", "allowed_to", "quarantined_to", "root", "confirms",
    "failed", "prev_hash", "hash",
)  # fmt: skip
HOP_COLUMNS = (
    "entry_id", "idx", "record_id", "source_offset", "outcome", "stopped_at", "reasons",
    "content_class", "origin_env", "tenant_id", "source_system", "generator", "parents", "digest",
)  # fmt: skip

_HOP_FIELDS = ", ".join(f"h.{c}" for c in HOP_COLUMNS[1:])
# A hop with its batch header and its batch's delivery entry (if any).
SELECT_HOPS = f"""
SELECT e.chain_id, e.seq, e.pipeline, e.run_id, e.at, e.source_topic, e.source_partition,
       e.allowed_to, e.quarantined_to, {_HOP_FIELDS}, d.seq, d.failed
FROM lineage_hops h
JOIN lineage_entries e ON e.id = h.entry_id
LEFT JOIN lineage_entries d
  ON d.kind = 'delivery' AND d.chain_id = e.chain_id AND d.confirms = e.seq
"""
# Leaks (`queries.leaks`): the SQL narrows, Python decides. A delivered hop is a suspect if its
# origin is not PRODUCTION (`queries.PRODUCTION`) or if the same record with the same bytes was
# quarantined at validate (`HopBatch.events`: a hop stopped at `validate` and not blocked).
# Each half has a partial index of its own, of the few rows it selects (none while the guard
# works, and the quarantined ones), so neither scans the delivered hops. The conditions are
# written as the indexes' are: a database uses a partial index only for a query that repeats
# its condition.
UNPRODUCTIVE = "h.outcome = 'delivered' AND (h.origin_env IS NULL OR h.origin_env <> 'PRODUCTION')"
FAILED_VALIDATION = "v.stopped_at = 'validate' AND v.outcome <> 'blocked'"
SUSPECT_INDEXES = (
    "CREATE INDEX IF NOT EXISTS lineage_hops_unproductive ON lineage_hops (entry_id, idx)"
    f" WHERE {UNPRODUCTIVE.replace('h.', '')}",
    "CREATE INDEX IF NOT EXISTS lineage_hops_failed_validation ON lineage_hops"
    f" (record_id, digest) WHERE {FAILED_VALIDATION.replace('v.', '')}",
)
SUSPECTS = (
    f"SELECT h.entry_id, h.idx FROM lineage_hops h WHERE {UNPRODUCTIVE}"
    " UNION SELECT h.entry_id, h.idx FROM lineage_hops v JOIN lineage_hops h"
    " ON h.record_id = v.record_id AND h.digest = v.digest"
    f" WHERE {FAILED_VALIDATION} AND h.outcome = 'delivered'"
)
SUSPECT_HOPS = "JOIN lineage_hops h ON h.entry_id = s.entry_id AND h.idx = s.idx"
# A blocked hop is an attempt if it has an `enforce` event (stopped there, or later, or never:
# `HopBatch.events`) and its origin is not PRODUCTION or a reason's rule starts with `leak_`
# (reasons are `[[rule, message], …]`).
ATTEMPT = (
    "h.outcome = 'blocked'"
    " AND (h.stopped_at IS NULL OR h.stopped_at NOT IN ('source', 'decode', 'validate'))"
    " AND (h.origin_env IS NULL OR h.origin_env <> 'PRODUCTION'"
    " OR h.reasons LIKE ? ESCAPE '!')"
)
ATTEMPT_RULES = '%["leak!_%'  # ATTEMPT's parameter: a rule that starts with `leak_`
SELECT_ENTRIES = f"SELECT {', '.join(ENTRY_COLUMNS)} FROM lineage_entries"
ROWS_OF_ENTRY = (
    f"SELECT {', '.join(HOP_COLUMNS[1:])} FROM lineage_hops h"
    " WHERE h.entry_id = (SELECT id FROM lineage_entries WHERE chain_id = ? AND seq = ?)"
    " ORDER BY h.idx"
)
ROWS_IN_RANGE = ROWS_OF_ENTRY.replace(" ORDER BY", " AND h.idx >= ? AND h.idx < ? ORDER BY")
INSERT_HOP = (
    f"INSERT INTO lineage_hops ({', '.join(HOP_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in HOP_COLUMNS)})"
)
ADD_ENTRY = (
    f"INSERT INTO lineage_entries ({', '.join(ENTRY_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in ENTRY_COLUMNS)})"
)
INSERT_ENTRY = ADD_ENTRY + " RETURNING id"


# The console's counts (`hop_counts`, `rule_counts`): one row per hour, chain, outcome,
# stopped_at, content class, tenant and set of rules (a sorted JSON list), added to by every
# append in its transaction (`_add_to_summary`). `grouping` is the row's identity (the chain
# and the other columns but the hour, as JSON: they may be NULL, which a primary key cannot
# hold); readers sum over the chains.
# Leak counts (`record_leak_check`): one row per check, and its leaks per tenant apart (so that
# row-level security by tenant applies to them as to the hops).
SUMMARY_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lineage_hop_summary (
        hour BIGINT NOT NULL,
        pipeline TEXT NOT NULL,
        outcome TEXT NOT NULL,
        stopped_at TEXT,
        content_class TEXT,
        tenant_id TEXT,
        rules TEXT NOT NULL,
        grouping TEXT NOT NULL,
        hops BIGINT NOT NULL,
        PRIMARY KEY (hour, grouping)
    )""",
    """CREATE TABLE IF NOT EXISTS lineage_leak_checks (
        at BIGINT NOT NULL,
        up_to_entry BIGINT NOT NULL,
        seconds DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS lineage_leak_checks_at ON lineage_leak_checks (at)",
    """CREATE TABLE IF NOT EXISTS lineage_leak_counts (
        at BIGINT NOT NULL,
        tenant_id TEXT,
        leaks BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS lineage_leak_counts_at ON lineage_leak_counts (at)",
)
SUMMARY_COLUMNS = (
    "hour", "pipeline", "outcome", "stopped_at", "content_class", "tenant_id", "rules",
    "grouping", "hops",
)  # fmt: skip
UPSERT_SUMMARY = (
    f"INSERT INTO lineage_hop_summary ({', '.join(SUMMARY_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in SUMMARY_COLUMNS)}) ON CONFLICT (hour, grouping)"
    " DO UPDATE SET hops = lineage_hop_summary.hops + excluded.hops"
)
HOUR_MS = 3_600_000


@dataclass(frozen=True, kw_only=True)
class Admission:
    """One gateway request's writes (`SqlStore.admit`): its hops (`batch`, or the `entry`
    written before), whether the destination acknowledged them all (`confirmed`), and its
    answer to keep under its `Idempotency-Key`, made from the hops entry: (client, key,
    request digest, answer)."""

    batch: HopBatch | None = None
    entry: Entry | None = None
    confirmed: bool = False
    new_run: bool = False  # the batch's run id is new (no `Idempotency-Key`): none of its
    # hops can be in the store, so `admit` does not look for them first
    answer: Callable[[Entry], tuple[str, str, str, str]] | None = None


ANSWERS_TABLE = """CREATE TABLE IF NOT EXISTS gateway_answers (
    client TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    answer TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (client, idempotency_key)
)"""


SELECT_HEADS = "SELECT chain_id, seq, hash FROM lineage_chains ORDER BY 1"
SELECT_CHECKPOINTS = (
    "SELECT at, run_id, heads, key_id, signature FROM lineage_checkpoints ORDER BY id"
)


class SqlStore(ABC):
    """The `LineageStore` logic over a DB-API connection; queries use `?` placeholders."""

    _errors: tuple[type[BaseException], ...]

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers_ready = False
        self._trees = BatchTrees()

    def _error_class(self, exc: BaseException) -> type[LineageGuardError]:
        """The error a failed write raises: an outage to retry unless the store says
        otherwise (SQLite's read-only file is a configuration error)."""
        return ServiceUnavailableError

    @property
    @abstractmethod
    def url(self) -> str: ...

    # -- what a dialect provides ------------------------------------------------------------

    @abstractmethod
    def _write(self) -> AbstractContextManager[Any]:
        """A write transaction (under the store's lock): yields a cursor."""

    def _write_pipelined(self) -> AbstractContextManager[Any]:
        """A write transaction whose statements go without waiting for each one's answer
        until a result is read (a dialect with round trips sends them together); here
        `_write`."""
        return self._write()

    @abstractmethod
    def _lock_head(self, cursor: Any, chain_id: str) -> ChainHead | None:
        """The chain's head, locked until the transaction ends (None: a new chain)."""

    @abstractmethod
    def _insert_hops(self, cursor: Any, rows: Sequence[tuple[Any, ...]]) -> None: ...

    @abstractmethod
    def _lock_checkpoints(self, cursor: Any) -> None:
        """Holds, until the transaction ends, the lock every signer takes before it reads the
        checkpoints (`add_next_checkpoint`)."""

    @abstractmethod
    def _fetchall(self, query: str, params: Sequence[Any]) -> list[Any]: ...

    @abstractmethod
    def _snapshot(self) -> AbstractContextManager[Any]:
        """A connection of its own, in one read-only snapshot, for long reads."""

    @abstractmethod
    def _stream(self, conn: Any, query: str, params: Sequence[Any]) -> Iterator[Any]: ...

    @abstractmethod
    def _fetch(self, conn: Any, query: str, params: Sequence[Any]) -> list[Any]:
        """All rows of a bounded query (one batch's rows, a few entries) on a snapshot
        connection, in one round trip."""

    @abstractmethod
    def close(self) -> None: ...

    def _q(self, query: str) -> str:
        return query

    def _hops_of(self, record_ids: Sequence[str]) -> tuple[str, str, list[Any]]:
        """How a query finds the hops of `record_ids`: what replaces `lineage_hops h` in its
        `FROM`, its `WHERE` condition, and their parameters (in that order). Here through
        the `record_id` index; a dialect may find them otherwise."""
        marks = ", ".join("?" for _ in record_ids)
        return "lineage_hops h", f"h.record_id IN ({marks})", list(record_ids)

    # -- writing ----------------------------------------------------------------------------

    def append(self, batch: HopBatch) -> Entry:
        """Write `batch` as the next entry of its chain: header, rows and head in one
        transaction, or nothing. A batch the same run already wrote from the same source
        offsets with the same rows (a retried bundle) is not written again: its entry is
        returned."""
        try:
            with self._write() as cursor:
                entry, _ = self._append_in(cursor, batch)
        except self._errors as exc:
            raise self._error_class(exc)(
                f"Cannot write {len(batch.table())} lineage hops to chain `{batch.chain_id}` in"
                f" `{self.url}`: {first_line(exc)}. Nothing of this batch was written."
            ) from exc
        return entry

    def _append_in(
        self, cursor: Any, batch: HopBatch, heads: Heads | None = None, *, new_run: bool = False
    ) -> tuple[Entry, bool]:
        """The batch's entry, and whether it was written now (False: the same run wrote it
        before; `new_run`: a run id never used before, not looked for); `heads`: as
        `_head_in`, `_moved`."""
        head = self._head_in(cursor, batch.chain_id, heads)
        table = batch.table()
        entry = hops_entry(batch, head=head)
        if not new_run:
            cursor.execute(
                self._q(
                    f"{SELECT_ENTRIES} WHERE chain_id = ? AND run_id = ? AND first_offset = ?"
                    " AND kind = 'hops' AND last_offset = ? AND root = ?"
                ),
                (entry.chain_id, entry.run_id, entry.first_offset, entry.last_offset, entry.root),
            )
            if (row := cursor.fetchone()) is not None:
                written = read_entry(row)
                if isinstance(written, Entry):
                    return written, False
        self._insert_entry(cursor, entry, table)
        self._moved(cursor, entry, heads)
        hour = _millis(entry.at) // HOUR_MS
        self._add_to_summary(cursor, hour, entry.pipeline, entry.chain_id, table)
        return entry, True

    def _add_to_summary(
        self, cursor: Any, hour: int, pipeline: str, chain_id: str, table: HopRows
    ) -> None:
        """Adds one batch's hops to `lineage_hop_summary`: counted per group from the batch's
        columns, then a handful of upserts in key order (two writers upserting the same rows
        take their locks in the same order)."""
        columns = table.columns
        rules = [
            tuple(sorted({rule for rule, _ in reasons})) if reasons else ()
            for reasons in columns["reasons"]
        ]
        groups = Counter(
            zip(
                columns["outcome"],
                columns["stopped_at"],
                columns["content_class"],
                columns["tenant_id"],
                rules,
                strict=True,
            )
        )
        rows = summary_rows(hour, pipeline, chain_id, groups.items())
        cursor.executemany(self._q(UPSERT_SUMMARY), rows)

    def has_summary(self) -> bool:
        """Whether the store holds the console's summary tables (`SUMMARY_SCHEMA`): a store
        written by an earlier lineage-guard has none until `fill_summary`."""
        rows = self._fetchall(self._q(self._TABLE_EXISTS), ["lineage_hop_summary"])
        return bool(rows) and rows[0][0] is not None

    def fill_summary(self) -> int | None:
        """Creates the summary tables if missing and, if the hop summary was missing, fills
        it from every hop in the same transaction (appends wait meanwhile: about a minute
        per 10 million hops). Returns how many hops it counted (None: it was there)."""
        try:
            with self._write() as cursor:
                return self._summary_in(cursor)
        except self._errors as exc:
            raise self._error_class(exc)(
                f"Cannot create the console's summary of `{self.url}`: {first_line(exc)}."
                " Open the store once as the tables' owner (e.g. `lineage-guard db roles`)."
            ) from exc

    def _summary_in(self, cursor: Any) -> int | None:
        cursor.execute(self._q(self._TABLE_EXISTS), ("lineage_hop_summary",))
        row = cursor.fetchone()
        missing = row is None or row[0] is None
        for statement in SUMMARY_SCHEMA:
            cursor.execute(statement)
        if not missing:
            return None
        self._lock_hops(cursor)
        cursor.execute("SELECT max(id) FROM lineage_entries")
        if cursor.fetchone()[0] is None:
            return 0
        log.warning(
            "Counting the hops of `%s` into its summary for the console, once (about a minute"
            " per 10 million hops; writers wait meanwhile).",
            self.url,
        )
        started = time.perf_counter()
        cursor.execute(
            f"SELECT e.at / {HOUR_MS}, e.pipeline, e.chain_id, h.outcome, h.stopped_at,"
            " h.reasons, h.content_class, h.tenant_id, count(*)"
            " FROM lineage_hops h JOIN lineage_entries e ON e.id = h.entry_id"
            " GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"
        )
        per_hour: dict[tuple[int, str, str], Counter[tuple[Any, ...]]] = {}
        rules: dict[str | None, tuple[str, ...]] = {}
        for hour, pipeline, chain, outcome, stopped, reasons, cls, tenant, n in cursor.fetchall():
            if (named := rules.get(reasons)) is None:
                named = rules[reasons] = _rules(reasons)
            key = (outcome, stopped, cls, tenant, named)
            per_hour.setdefault((int(hour), pipeline, chain), Counter())[key] += int(n)
        total = 0
        for (hour, pipeline, chain), groups in per_hour.items():
            rows = summary_rows(hour, pipeline, chain, groups.items())
            cursor.executemany(self._q(UPSERT_SUMMARY), rows)
            total += sum(r[-1] for r in rows)
        log.warning(
            "Counted %s hops of `%s` in %.1f s.", f"{total:,}", self.url,
            time.perf_counter() - started,
        )  # fmt: skip
        return total

    @abstractmethod
    def _lock_hops(self, cursor: Any) -> None:
        """Keeps other writers from adding hops until the transaction ends."""

    def confirm(
        self, confirmations: Sequence[tuple[Entry, int, Sequence[Failure]]], *, at: datetime
    ) -> list[Entry]:
        """Append, in one transaction, a delivery entry for each (hops entry, records
        acknowledged or refused, refusals): written once the destination answered."""
        if not confirmations:
            return []
        written = []
        try:
            with self._write() as cursor:
                for confirmed, count, failed in confirmations:
                    entry = self._confirm_in(cursor, confirmed, count, failed, at)
                    if entry is not None:
                        written.append(entry)
        except self._errors as exc:
            raise self._error_class(exc)(
                f"Cannot record {len(confirmations)} delivery confirmations in `{self.url}`:"
                f" {first_line(exc)}. Their offsets are not committed."
            ) from exc
        return written

    def _confirm_in(
        self,
        cursor: Any,
        confirmed: Entry,
        count: int,
        failed: Sequence[Failure],
        at: datetime,
        *,
        heads: Heads | None = None,
        just_written: bool = False,
    ) -> Entry | None:
        """The delivery entry of `confirmed`, unless written before (`just_written`: this
        transaction wrote `confirmed`, so nothing confirms it yet); `heads`: as `_head_in`,
        `_moved`."""
        head = self._head_in(cursor, confirmed.chain_id, heads)
        assert head is not None, "a delivery entry follows its hops entry"
        if not just_written:
            cursor.execute(
                self._q(
                    "SELECT 1 FROM lineage_entries WHERE chain_id = ?"
                    " AND kind = 'delivery' AND confirms = ?"
                ),
                (confirmed.chain_id, confirmed.seq),
            )
            if cursor.fetchone() is not None:
                return None  # a retried bundle's batch, already answered once
        entry = delivery_entry(confirmed, count=count, failed=failed, at=at, head=head)
        cursor.execute(self._q(ADD_ENTRY), entry_row(entry))  # no id to wait for
        self._moved(cursor, entry, heads)
        return entry

    def _head_in(self, cursor: Any, chain_id: str, heads: Heads | None) -> ChainHead | None:
        """The chain's head, locked until the transaction ends; with `heads` (the heads this
        transaction locked and moved), read once per transaction."""
        if heads is None:
            return self._lock_head(cursor, chain_id)
        if chain_id not in heads:
            heads[chain_id] = self._lock_head(cursor, chain_id)
        return heads[chain_id]

    def _moved(self, cursor: Any, entry: Entry, heads: Heads | None) -> None:
        """`entry` is its chain's head now: written at once, or with `heads`, kept there and
        written once for the transaction (`_set_head` of each, before its commit)."""
        if heads is None:
            self._set_head(cursor, entry)
        else:
            heads[entry.chain_id] = ChainHead(
                chain_id=entry.chain_id, seq=entry.seq, hash=entry.hash
            )

    def admit(self, admissions: Sequence[Admission], *, at: datetime) -> list[Entry]:
        """The gateway's writes for several requests in one transaction (one commit, one
        fsync, for all of them), or nothing: per admission, its hops (or the entry written
        before), their delivery entry when `confirmed`, and its answer under its key.
        Returns each admission's hops entry."""
        if not admissions:
            return []
        if any(a.answer is not None for a in admissions):
            self._answers_table()
        try:
            try:
                return self._admit_in(admissions, at)
            except self._errors as exc:
                if not self._head_moved(exc):
                    raise
            return self._admit_in(admissions, at)  # once more, the heads read and locked
        except self._errors as exc:
            raise self._error_class(exc)(
                f"Cannot record {len(admissions)} gateway requests in `{self.url}`:"
                f" {first_line(exc)}. Nothing of them was recorded."
            ) from exc

    def _admit_in(self, admissions: Sequence[Admission], at: datetime) -> list[Entry]:
        entries = []
        heads: Heads = {}  # the requests of a client share a chain: its head read once
        with self._write_pipelined() as cursor:
            for admission in admissions:
                entry, written = admission.entry, False
                if entry is None:
                    assert admission.batch is not None, "an admission writes or names hops"
                    entry, written = self._append_in(
                        cursor, admission.batch, heads, new_run=admission.new_run
                    )
                if admission.confirmed:
                    self._confirm_in(
                        cursor, entry, entry.count, (), at, heads=heads, just_written=written
                    )
                if admission.answer is not None:
                    client, key, digest, answer = admission.answer(entry)
                    cursor.execute(
                        self._q(
                            "INSERT INTO gateway_answers"
                            " (client, idempotency_key, request_sha256, answer, at)"
                            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
                        ),
                        (client, key, digest, answer, _millis(at)),
                    )
                entries.append(entry)
            for head in heads.values():
                if head is not None:
                    self._set_head(cursor, head)
        return entries

    def _head_moved(self, exc: BaseException) -> bool:
        """Whether a failed `admit` failed only because a chain's head that the store kept
        from its last admissions had moved (another writer): nothing was written, and it runs
        again with the heads read. Here never."""
        return False

    def answer_of(self, client: str, key: str) -> tuple[str, str] | None:
        """The (request digest, answer) kept for `client`'s `Idempotency-Key` `key`, if any."""
        self._answers_table()
        rows = self._fetchall(
            self._q(
                "SELECT request_sha256, answer FROM gateway_answers"
                " WHERE client = ? AND idempotency_key = ?"
            ),
            (client, key),
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def _answers_table(self) -> None:
        if self._answers_ready:
            return
        try:
            with self._write() as cursor:
                cursor.execute(ANSWERS_TABLE)
        except self._errors as exc:
            raise self._error_class(exc)(
                f"Cannot create the gateway's answers table in `{self.url}`: {first_line(exc)}."
            ) from exc
        self._answers_ready = True

    def refused_rows(self, batch: HopBatch) -> dict[int, str]:
        """The hops of `batch` whose rows the store refuses (index → its error), found by
        writing each row alone in a transaction that is rolled back: nothing is kept. Asked
        only after `append` raised `RowRefusedError`."""
        refused: dict[int, str] = {}
        try:
            with self._write() as cursor:
                for index, hop in enumerate(batch.all_hops()):
                    cursor.execute("SAVEPOINT probe")
                    try:
                        cursor.execute(self._q(INSERT_HOP), hop_row(0, index, hop))
                    except self._errors as exc:
                        if self._error_class(exc) is not RowRefusedError:
                            raise
                        refused[index] = first_line(exc)
                    cursor.execute("ROLLBACK TO SAVEPOINT probe")
                raise _Probed
        except _Probed:
            return refused
        except self._errors as exc:
            raise self._error_class(exc)(
                f"Cannot check {len(batch.table())} lineage hops of chain `{batch.chain_id}` in"
                f" `{self.url}`: {first_line(exc)}."
            ) from exc

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        try:
            with self._write() as cursor:
                self._insert_checkpoint(cursor, checkpoint)
        except self._errors as exc:
            raise self._error_class(exc)(
                f"Cannot write a checkpoint to `{self.url}`: {first_line(exc)}."
            ) from exc

    def add_next_checkpoint(
        self, make: Callable[[list[Checkpoint], list[ChainHead]], Checkpoint]
    ) -> Checkpoint:
        """Adds `make(checkpoints, heads)`, given the store's checkpoints and chain heads as
        read in the same transaction, under a lock every signer takes: two runs signing at
        once chain one after the other, never both after the same predecessor."""
        try:
            with self._write() as cursor:
                self._lock_checkpoints(cursor)
                cursor.execute(SELECT_CHECKPOINTS)
                checkpoints = [_checkpoint(row) for row in cursor.fetchall()]
                cursor.execute(SELECT_HEADS)
                heads = [ChainHead(chain_id=r[0], seq=r[1], hash=r[2]) for r in cursor.fetchall()]
                checkpoint = make(checkpoints, heads)
                self._insert_checkpoint(cursor, checkpoint)
        except self._errors as exc:
            raise self._error_class(exc)(
                f"Cannot write a checkpoint to `{self.url}`: {first_line(exc)}."
            ) from exc
        return checkpoint

    def _insert_checkpoint(self, cursor: Any, checkpoint: Checkpoint) -> None:
        cursor.execute(
            self._q(
                "INSERT INTO lineage_checkpoints (at, run_id, heads, key_id, signature)"
                " VALUES (?, ?, ?, ?, ?)"
            ),
            (
                _millis(checkpoint.at),
                checkpoint.run_id,
                _json([head.to_dict() for head in checkpoint.heads]),
                checkpoint.key_id,
                checkpoint.envelope or checkpoint.signature,
            ),
        )

    def _insert_entry(self, cursor: Any, entry: Entry, table: HopRows) -> None:
        """`entry` and its hop rows, which name it by its id."""
        cursor.execute(self._q(INSERT_ENTRY), entry_row(entry))
        self._insert_hops(cursor, table.store_rows(int(cursor.fetchone()[0])))

    def _set_head(self, cursor: Any, entry: Entry | ChainHead) -> None:
        cursor.execute(
            self._q(
                "INSERT INTO lineage_chains (chain_id, seq, hash) VALUES (?, ?, ?)"
                " ON CONFLICT (chain_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash"
            ),
            (entry.chain_id, entry.seq, entry.hash),
        )

    # -- reading ----------------------------------------------------------------------------

    def hops(self, record_ids: Collection[str]) -> list[StoredHop]:
        """Every stored hop of `record_ids` (each asked for as given and as a hop keeps it,
        `lineage.bounds`), in time order."""
        ids = lookup_ids(record_ids)
        found: list[StoredHop] = []
        for start in range(0, len(ids), IN_CHUNK):
            hops, where, params = self._hops_of(ids[start : start + IN_CHUNK])
            query = SELECT_HOPS.replace("FROM lineage_hops h", f"FROM {hops}", 1)
            query += f" WHERE {where}"
            found.extend(stored_hop(row) for row in self._fetchall(self._q(query), params))
        return sorted(found, key=lambda s: (s.at, s.chain_id, s.seq, s.index))

    def trace(self, record_id: str) -> list[StoredEvent]:
        return self.trace_many([record_id])

    def trace_many(
        self,
        record_ids: Collection[str],
        *,
        stage: Stage | None = None,
        decisions: Collection[Decision] | None = None,
    ) -> list[StoredEvent]:
        events = [
            stored
            for hop in self.hops(record_ids)
            for stored in hop.events()
            if (stage is None or stored.event.stage == stage)
            and (decisions is None or stored.event.decision in decisions)
        ]
        return sorted(events, key=order_key)

    def scan(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: Outcome | None = None,
    ) -> Iterator[StoredHop]:
        """Stream the hops of batches written with `since <= at < until`, in time order,
        through a connection of their own (appends go on meanwhile)."""
        where, params = _window(since, until)
        if outcome is not None:
            where.append("h.outcome = ?")
            params.append(str(outcome))
        query = SELECT_HOPS + (f" WHERE {' AND '.join(where)}" if where else "")
        query += " ORDER BY e.at, e.chain_id, e.seq, h.idx"
        with self._snapshot() as conn:
            for row in self._stream(conn, self._q(query), params):
                yield stored_hop(row)

    def suspect_deliveries(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        destinations: Collection[str] | None = None,
    ) -> Iterator[StoredHop]:
        """The delivered hops, in `scan`'s order, that may be leaks (`queries.leaks` decides):
        from an origin other than PRODUCTION, or whose record was quarantined at validate
        with the same bytes in any batch. Found by the database through two partial indexes
        (`SUSPECT_INDEXES`): a full scan only for what they cannot answer."""
        where, params = _window(since, until)
        if destinations is not None:
            if not destinations:
                return iter(())
            ordered = sorted(destinations)
            where.append(f"e.allowed_to IN ({', '.join('?' for _ in ordered)})")
            params += ordered
        query = (
            SELECT_HOPS.replace("FROM lineage_hops h", f"FROM ({SUSPECTS}) s {SUSPECT_HOPS}", 1)
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY e.at, e.chain_id, e.seq, h.idx"
        )
        return self._stream_hops(query, params)

    def blocked_attempts(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[StoredHop]:
        """The blocked hops, in `scan`'s order, that may be blocked leak attempts
        (`queries.leaks` decides): they passed or stopped at `enforce`, with an origin other
        than PRODUCTION or a `leak_…` reason."""
        where, params = _window(since, until)
        where.append(ATTEMPT)
        params.append(ATTEMPT_RULES)
        query = f"{SELECT_HOPS} WHERE {' AND '.join(where)} ORDER BY e.at, e.chain_id, e.seq, h.idx"
        return self._stream_hops(query, params)

    def _stream_hops(self, query: str, params: list[Any]) -> Iterator[StoredHop]:
        with self._snapshot() as conn:
            for row in self._stream(conn, self._q(query), params):
                yield stored_hop(row)

    def events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        stage: Stage | None = None,
        decision: Decision | None = None,
    ) -> Iterator[StoredEvent]:
        """The per-stage events of the hops `scan` yields, filtered by stage and decision."""
        for hop in self.scan(since=since, until=until):
            for stored in hop.events():
                if (stage is None or stored.event.stage == stage) and (
                    decision is None or stored.event.decision == decision
                ):
                    yield stored

    def content_classes(self, record_ids: Collection[str]) -> dict[str, str]:
        """The highest content class recorded for each of `record_ids` that the store knows
        (HUMAN < AI_ASSISTED < SYNTHETIC), whichever guard, worker or run recorded it; an id
        longer than a hop keeps is found by its bounded form (`lineage.bounds`)."""
        wanted = list(dict.fromkeys(record_ids))
        ids = lookup_ids(wanted)
        found: dict[str, str] = {}
        for start in range(0, len(ids), IN_CHUNK):
            hops, where, params = self._hops_of(ids[start : start + IN_CHUNK])
            query = (
                f"SELECT DISTINCT h.record_id, h.content_class FROM {hops}"
                f" WHERE {where} AND h.content_class IS NOT NULL"
            )
            for record_id, content_class in self._fetchall(self._q(query), params):
                if CLASS_RANK.get(content_class, -1) > CLASS_RANK.get(found.get(record_id), -1):
                    found[record_id] = content_class
        classes: dict[str, str] = {}
        for record_id in wanted:
            ranked = [found[i] for i in (record_id, stored_id(record_id)) if i in found]
            if ranked:
                classes[record_id] = max(ranked, key=lambda c: CLASS_RANK.get(c, -1))
        return classes

    def run_counts(
        self,
        pipeline: str,
        run_id: str,
        *,
        since: datetime | None = None,
        past: Mapping[tuple[str, int], int] | None = None,
    ) -> list[RunCount]:
        """How many hops the guard `pipeline` recorded in run `run_id`, per decision and
        whether their delivery was confirmed: the run's counts from the rows its lineage is.
        `since`: only batches written at or after it; `past`: only hops at or after these
        source offsets, per (topic, partition) (other partitions are left out)."""
        query = (
            f"SELECT h.outcome, h.stopped_at, {self._RULES_OF_REASONS} AS rules, h.content_class,"
            " h.origin_env, d.seq IS NOT NULL AND d.failed IS NULL AS confirmed"
            # The run's entries first, then their hops by primary key (SQLite joins in the
            # order of a CROSS JOIN): the other runs' hops are never read.
            " FROM lineage_entries e CROSS JOIN lineage_hops h"
            " LEFT JOIN lineage_entries d"
            "  ON d.kind = 'delivery' AND d.chain_id = e.chain_id AND d.confirms = e.seq"
            " WHERE h.entry_id = e.id AND e.kind = 'hops' AND e.pipeline = ? AND e.run_id = ?"
        )
        params: list[Any] = [pipeline, run_id]
        if since is not None:
            query += " AND e.at >= ?"
            params.append(_millis(since))
        if past is not None:
            if not past:
                return []
            query += (
                " AND ("
                + " OR ".join(
                    "(e.source_topic = ? AND e.source_partition = ? AND h.source_offset >= ?)"
                    for _ in past
                )
                + ")"
            )
            for (topic, partition), offset in past.items():
                params += [topic, partition, offset]
        # Grouped by rule names, not by the reasons' texts (which name each record): a few
        # groups, however many records were stopped.
        query = (
            "SELECT outcome, stopped_at, rules, content_class, origin_env, confirmed, count(*)"
            f" FROM ({query}) hops GROUP BY 1, 2, 3, 4, 5, 6"
        )
        counts: dict[tuple[Any, ...], int] = {}
        for outcome, stopped_at, names, content_class, origin_env, confirmed, n in self._fetchall(
            self._q(query), params
        ):
            rules = tuple(sorted(set(json.loads(names)))) if names else ()
            key = (outcome, stopped_at, rules, content_class, origin_env, bool(confirmed))
            counts[key] = counts.get(key, 0) + int(n)
        return [
            RunCount(
                outcome=outcome,
                stopped_at=stopped_at,
                rules=rules,
                content_class=content_class,
                origin_env=origin_env,
                confirmed=confirmed,
                count=n,
            )
            for (outcome, stopped_at, rules, content_class, origin_env, confirmed), n in (
                counts.items()
            )
        ]

    def chains(self) -> Iterator[str]:
        rows = self._fetchall(
            "SELECT chain_id FROM lineage_chains UNION"
            " SELECT DISTINCT chain_id FROM lineage_entries ORDER BY 1",
            [],
        )
        return iter([row[0] for row in rows])

    def head(self, chain_id: str) -> ChainHead | None:
        rows = self._fetchall(
            self._q("SELECT seq, hash FROM lineage_chains WHERE chain_id = ?"), [chain_id]
        )
        return ChainHead(chain_id=chain_id, seq=rows[0][0], hash=rows[0][1]) if rows else None

    def heads(self) -> list[ChainHead]:
        rows = self._fetchall(SELECT_HEADS, [])
        return [ChainHead(chain_id=r[0], seq=r[1], hash=r[2]) for r in rows]

    def checkpoints(self) -> list[Checkpoint]:
        rows = self._fetchall(SELECT_CHECKPOINTS, [])
        return [_checkpoint(row) for row in rows]

    # -- verifying --------------------------------------------------------------------------

    def verify(
        self,
        chain_id: str | None = None,
        *,
        public_key: Any = None,
        held: Checkpoint | None = None,
    ) -> Verification:
        """Walk one chain (or every chain) from one snapshot and report the first broken link.
        With `public_key` (Ed25519), also check every checkpoint it signed, that each one's
        predecessor is still here, and that at least one exists; with `held` (a checkpoint
        kept outside the store, `lineage.checkpoints.load_checkpoint`), that the store
        still extends it."""
        with self._snapshot() as conn:
            where, params = ("", []) if chain_id is None else (" WHERE chain_id = ?", [chain_id])
            heads = {
                row[0]: ChainHead(chain_id=row[0], seq=row[1], hash=row[2])
                for row in self._stream(
                    conn, self._q(f"SELECT chain_id, seq, hash FROM lineage_chains{where}"), params
                )
            }
            entries = list(
                self._stream(
                    conn, self._q(f"{SELECT_ENTRIES}{where} ORDER BY chain_id, seq"), params
                )
            )

            def rows_of(entry: Entry) -> list[Hop | UnreadableRow]:
                rows = self._fetch(conn, self._q(ROWS_OF_ENTRY), [entry.chain_id, entry.seq])
                return [read_hop(row, entry.chain_id, entry.seq) for row in rows]

            def leaves_of(entry: Entry) -> list[bytes] | None:
                return leaves(
                    self._fetch(conn, self._q(ROWS_OF_ENTRY), [entry.chain_id, entry.seq])
                )

            chains = batches = hops = 0
            hashes: dict[str, dict[int, str]] = {}
            by_chain: dict[str, list[Entry | UnreadableRow]] = {}
            for row in entries:
                by_chain.setdefault(str(row[0]), []).append(read_entry(row))
            for name in sorted(by_chain.keys() | heads.keys()):
                chains += 1
                found, b, h, seen = verify_chain(
                    name, by_chain.get(name, []), heads.get(name), rows_of, leaves_of
                )
                batches, hops = batches + b, hops + h
                hashes[name] = seen
                if found is not None:
                    return Verification(chains=chains, batches=batches, hops=hops, broken=found)
            signed = 0
            if public_key is not None:
                broken, signed = self._check_checkpoints(conn, public_key, hashes, chain_id, held)
                if broken is not None:
                    return Verification(
                        chains=chains, batches=batches, hops=hops, broken=broken,
                        signed_checkpoints=signed,
                    )  # fmt: skip
            return Verification(
                chains=chains, batches=batches, hops=hops, broken=None, signed_checkpoints=signed
            )

    def _check_checkpoints(
        self,
        conn: Any,
        public_key: Any,
        hashes: dict[str, dict[int, str]],
        chain_id: str | None,
        held: Checkpoint | None,
    ) -> tuple[BrokenLink | None, int]:
        def only(checkpoint: Checkpoint) -> dict[str, ChainHead]:
            return {
                head.chain_id: head
                for head in checkpoint.heads
                if chain_id is None or head.chain_id == chain_id
            }

        if held is not None:
            if held.key_id != key_id(public_key) or not is_signed_by(held, public_key):
                text = (
                    f"the held {held.describe()} does not verify with the public key: it was"
                    " forged or edited, or signed by another key"
                )
                return _checkpoint_break(BreakKind.SIGNATURE, text), 0
            if broken := check_held_heads(only(held), hashes, held.describe()):
                return broken, 0
        rows = self._stream(
            conn,
            "SELECT at, run_id, heads, key_id, signature FROM lineage_checkpoints ORDER BY id",
            [],
        )
        ours = key_id(public_key)
        signed = 0
        digests: dict[str, int] = {}  # digest -> seq of each checkpoint of this key
        chained: list[Checkpoint] = []
        for row in rows:
            try:
                checkpoint = _checkpoint(row)
            except (ValueError, TypeError, KeyError) as exc:
                text = f"a checkpoint cannot be read ({exc}): it was edited"
                return _checkpoint_break(BreakKind.SIGNATURE, text), signed
            if checkpoint.key_id != ours:
                continue  # signed by another key: it vouches for nothing here
            if not is_signed_by(checkpoint, public_key):
                text = (
                    f"the checkpoint of run `{checkpoint.run_id}` does not verify with the"
                    " public key: it was forged or edited"
                )
                return _checkpoint_break(BreakKind.SIGNATURE, text), signed
            signed += 1
            digests[checkpoint.digest()] = checkpoint.seq if checkpoint.seq is not None else signed
            if checkpoint.seq is not None:
                chained.append(checkpoint)
            if broken := check_signed_heads(only(checkpoint), hashes):
                return broken, signed
        for checkpoint in chained:  # each one's predecessor must still be here
            previous = checkpoint.previous
            if previous is not None and digests.get(previous.sha256) != previous.seq:
                text = (
                    f"{checkpoint.describe()} follows checkpoint {previous.seq}"
                    f" (sha256 `{previous.sha256[:16]}…`), which the store no longer holds:"
                    " checkpoints were deleted or replaced"
                )
                return _checkpoint_break(BreakKind.ROLLED_BACK, text), signed
        if held is not None and held.digest() not in digests:
            text = (
                f"the store no longer holds the held {held.describe()}: its newest checkpoints"
                " were deleted (rolled back)"
            )
            return _checkpoint_break(BreakKind.ROLLED_BACK, text), signed
        if signed == 0:
            text = (
                "no checkpoint signed by this public key is in the store: checkpoints were"
                " deleted, or no run was given `--signing-key`"
            )
            return _checkpoint_break(BreakKind.UNSIGNED, text), signed
        return None, signed

    def verify_batches(
        self,
        chain_id: str,
        seqs: Collection[int],
        *,
        rows: Mapping[int, Collection[int]] | None = None,
        proven: dict[int, datetime] | None = None,
    ) -> dict[int, BrokenLink | None]:
        """Check only entries `seqs` of `chain_id`: each against its rows, its own hash and
        its predecessor's (what `trace` shows per hop; `verify` walks everything).

        With `rows` (per seq, the indexes of the hops that matter: a trace's), a batch this
        store object read whole before and found intact is not read whole again: its link and
        hash are checked, and each of those hops by an inclusion proof, its block of
        2^PROOF_HEIGHT rows read now and hashed into the node of the batch's Merkle tree kept
        from that reading (the tree's root is the entry's). Any mismatch falls back to reading
        the batch whole. Those batches go into `proven`, with the time of that reading."""
        result: dict[int, BrokenLink | None] = {}
        with self._snapshot() as conn:
            for seq in sorted(set(seqs)):
                headers = self._fetch(
                    conn,
                    self._q(f"{SELECT_ENTRIES} WHERE chain_id = ? AND seq IN (?, ?)"),
                    [chain_id, seq - 1, seq],
                )
                found = {int(r[1]): read_entry(r) for r in headers if isinstance(r[1], int)}
                entry = found.get(seq)
                if entry is None:
                    text = f"chain `{chain_id}` batch {seq} is missing: deleted"
                    result[seq] = BrokenLink(
                        chain_id=chain_id, seq=seq, kind=BreakKind.DELETED, description=text
                    )
                    continue
                prev = found.get(seq - 1)
                if seq == 1:
                    prev_hash = GENESIS_HASH
                elif isinstance(prev, Entry):
                    prev_hash = prev.hash
                else:
                    text = (
                        f"chain `{chain_id}` batch {seq - 1}, before batch {seq}, is missing"
                        " or unreadable: deleted or edited"
                    )
                    result[seq] = BrokenLink(
                        chain_id=chain_id, seq=seq - 1, kind=BreakKind.DELETED, description=text
                    )
                    continue

                def rows_of(e: Entry) -> list[Hop | UnreadableRow]:
                    rows = self._fetch(conn, self._q(ROWS_OF_ENTRY), [e.chain_id, e.seq])
                    return [read_hop(row, e.chain_id, e.seq) for row in rows]

                def leaves_of(e: Entry) -> list[bytes] | None:
                    found = leaves(self._fetch(conn, self._q(ROWS_OF_ENTRY), [e.chain_id, e.seq]))
                    if rows is not None and found is not None and len(found) == e.count:
                        self._trees.keep(e, found)
                    return found

                def rows_proven(e: Entry) -> bool:
                    if rows is None:
                        return False
                    at = self._trees.prove(e, rows.get(e.seq, ()), partial(self._block, conn, e))
                    if at is not None and proven is not None:
                        proven[e.seq] = at
                    return at is not None

                result[seq], _ = check_entry(
                    entry,
                    expected_seq=seq,
                    prev_hash=prev_hash,
                    rows_of=rows_of,
                    leaves_of=leaves_of,
                    rows_proven=rows_proven,
                )
        return result

    def _block(
        self, conn: Any, entry: Entry, first: int, end: int
    ) -> tuple[list[int], list[bytes] | None]:
        """The indexes and leaves of `entry`'s rows with `first <= idx < end`."""
        rows = self._fetch(conn, self._q(ROWS_IN_RANGE), [entry.chain_id, entry.seq, first, end])
        return [row[0] for row in rows], leaves(rows)

    # -- the console's aggregates and pages (`lineage_guard.web.console`) --------------------

    def hop_counts(self, *, tenants: Collection[str] | None = None) -> list[HopCount]:
        """Hops counted per (hour, pipeline, outcome, stopped_at, content class, tenant);
        only `tenants`' hops when given. From the summary the appends keep
        (`lineage_hop_summary`), not from the hops."""
        where, params = _tenant_clause(tenants)
        rows = self._fetchall(
            self._q(
                "SELECT h.hour, h.pipeline, h.outcome, h.stopped_at, h.content_class,"
                f" h.tenant_id, sum(h.hops) FROM lineage_hop_summary h{where}"
                " GROUP BY h.hour, h.pipeline, h.outcome, h.stopped_at, h.content_class,"
                " h.tenant_id"
            ),
            params,
        )
        return [
            HopCount(
                hour=_time(int(r[0]) * HOUR_MS),
                pipeline=r[1],
                outcome=r[2],
                stopped_at=r[3],
                content_class=r[4],
                tenant_id=r[5],
                count=int(r[6]),
            )
            for r in rows
        ]

    def rule_counts(self, *, tenants: Collection[str] | None = None) -> dict[str, int]:
        """How many quarantined or blocked hops name each rule (from the summary)."""
        where, params = _tenant_clause(tenants)
        query = (
            "SELECT h.rules, sum(h.hops) FROM lineage_hop_summary h"
            + (f"{where} AND" if where else " WHERE")
            + " h.outcome <> 'delivered' GROUP BY h.rules"
        )
        counts: Counter[str] = Counter()
        for rules, n in self._fetchall(self._q(query), params):
            for rule in json.loads(rules):
                counts[rule] += int(n)
        return dict(counts)

    def record_leak_check(
        self, *, at: datetime, up_to_entry: int, seconds: float, leaks: Mapping[str | None, int]
    ) -> None:
        """Keeps one leak count (`queries.leaks`) the console made: started `at`, when the
        newest entry was `up_to_entry`, taking `seconds`; its leaks per tenant."""
        millis = _millis(at)

        def work(cursor: Any) -> None:
            cursor.execute(
                self._q(
                    "INSERT INTO lineage_leak_checks (at, up_to_entry, seconds) VALUES (?, ?, ?)"
                ),
                (millis, up_to_entry, seconds),
            )
            cursor.executemany(
                self._q("INSERT INTO lineage_leak_counts (at, tenant_id, leaks) VALUES (?, ?, ?)"),
                [(millis, tenant, n) for tenant, n in leaks.items() if n],
            )

        self._account_write(work)

    def leak_check(self, *, tenants: Collection[str] | None = None) -> LeakCheck | None:
        """The newest leak count kept (`record_leak_check`), of `tenants`' leaks when given."""
        rows = self._fetchall(
            "SELECT at, up_to_entry, seconds FROM lineage_leak_checks ORDER BY at DESC LIMIT 1",
            [],
        )
        if not rows:
            return None
        at, up_to_entry, seconds = rows[0]
        where, params = _tenant_clause(tenants)
        counted = self._fetchall(
            self._q(
                "SELECT sum(h.leaks) FROM lineage_leak_counts h"
                + (f"{where} AND" if where else " WHERE")
                + " h.at = ?"
            ),
            [*params, at],
        )
        return LeakCheck(
            at=_time(at),
            up_to_entry=int(up_to_entry),
            seconds=float(seconds),
            leaks=int(counted[0][0] or 0),
        )

    def runs(self, *, tenants: Collection[str] | None = None) -> list[RunSummary]:
        """One summary per (pipeline, run), newest first."""
        where, params = _tenant_clause(tenants)
        rows = self._fetchall(
            self._q(
                "SELECT e.pipeline, e.run_id, min(e.at), max(e.at), count(DISTINCT e.chain_id),"
                " count(DISTINCT e.id), count(*),"
                " sum(CASE WHEN h.outcome = 'delivered' THEN 1 ELSE 0 END),"
                " sum(CASE WHEN h.outcome = 'quarantined' THEN 1 ELSE 0 END),"
                " sum(CASE WHEN h.outcome = 'blocked' THEN 1 ELSE 0 END)"
                f" FROM lineage_hops h JOIN lineage_entries e ON e.id = h.entry_id{where}"
                " GROUP BY e.pipeline, e.run_id ORDER BY min(e.at) DESC"
            ),
            params,
        )
        return [
            RunSummary(
                pipeline=r[0],
                run_id=r[1],
                first=_time(r[2]),
                last=_time(r[3]),
                chains=int(r[4]),
                batches=int(r[5]),
                hops=int(r[6]),
                delivered=int(r[7]),
                quarantined=int(r[8]),
                blocked=int(r[9]),
            )
            for r in rows
        ]

    def quarantined(
        self,
        *,
        tenants: Collection[str] | None = None,
        tenant: str | None = None,
        rule: str | None = None,
        stage: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[StoredHop]:
        """Quarantined and blocked hops, newest first, filtered, one page."""
        where, params = _tenant_clause(tenants)
        clauses = [where.removeprefix(" WHERE ")] if where else []
        clauses.append("h.outcome <> 'delivered'")
        for clause, value in (
            ("h.tenant_id = ?", tenant),
            ("h.stopped_at = ?", stage),
            ("e.at >= ?", _millis(since) if since else None),
            ("e.at < ?", _millis(until) if until else None),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        if rule is not None:
            clauses.append("h.reasons LIKE ? ESCAPE '!'")
            escaped = rule.replace("!", "!!").replace("%", "!%").replace("_", "!_")
            params.append(f'%["{escaped}",%')  # reasons: [[rule, message], …]
        query = (
            f"{SELECT_HOPS} WHERE {' AND '.join(clauses)}"
            " ORDER BY e.at DESC, e.id DESC, h.idx LIMIT ? OFFSET ?"
        )
        rows = self._fetchall(self._q(query), [*params, limit, offset])
        return [stored_hop(row) for row in rows]

    def mark(self) -> tuple[int, int]:
        """What changes when anything is written: (last entry id, checkpoints)."""
        rows = self._fetchall(
            "SELECT (SELECT max(id) FROM lineage_entries), (SELECT count(*) FROM"
            " lineage_checkpoints)",
            [],
        )
        return (int(rows[0][0] or 0), int(rows[0][1] or 0))

    # -- users, API keys and the access log (`lineage.accounts`) ----------------------------

    _ACCOUNT_SCHEMA: Sequence[str] = ()  # the dialect's CREATE statements for those tables
    _TABLE_EXISTS = ""  # the dialect's query: one row with a non-null value if table `?` exists
    # The dialect's expression for the rule names in a hop's `h.reasons`, as a JSON array text.
    _RULES_OF_REASONS = ""
    _accounts_ready = False

    def _accounts(self) -> None:
        """Create the account tables on first use, if missing (a store written by an earlier
        lineage-guard has none); a role that may not create them needs them made before."""
        if self._accounts_ready:
            return
        rows = self._fetchall(self._q(self._TABLE_EXISTS), ["lineage_access_log"])
        if not rows or rows[0][0] is None:
            self._account_write(lambda cursor: [cursor.execute(s) for s in self._ACCOUNT_SCHEMA])
        self._accounts_ready = True

    def _account_write(self, work: Any) -> Any:
        try:
            with self._write() as cursor:
                return work(cursor)
        except self._errors as exc:
            raise self._error_class(exc)(
                f"Cannot write to the lineage store `{self.url}`: {first_line(exc)}."
                " Check `--lineage-store` and the user's rights."
            ) from exc

    def add_user(self, user: UserRecord) -> None:
        self._accounts()

        def work(cursor: Any) -> None:
            cursor.execute(self._q("SELECT 1 FROM lineage_users WHERE name = ?"), (user.name,))
            if cursor.fetchone() is not None:
                raise UnusableInputError(
                    f"A user `{user.name}` exists already: remove it first (`users remove`)."
                )
            cursor.execute(
                self._q(
                    "INSERT INTO lineage_users (name, password_hash, role, tenants, created_at)"
                    " VALUES (?, ?, ?, ?, ?)"
                ),
                (
                    user.name,
                    user.password_hash,
                    user.role,
                    _tenants_text(user.tenants),
                    _millis(user.created_at),
                ),
            )

        self._account_write(work)

    def user(self, name: str) -> UserRecord | None:
        self._accounts()
        rows = self._fetchall(self._q(f"{_SELECT_USERS} WHERE name = ?"), [name])
        return _user(rows[0]) if rows else None

    def users(self) -> list[UserRecord]:
        self._accounts()
        return [_user(row) for row in self._fetchall(f"{_SELECT_USERS} ORDER BY name", [])]

    def remove_user(self, name: str) -> bool:
        self._accounts()

        def work(cursor: Any) -> bool:
            cursor.execute(self._q("DELETE FROM lineage_users WHERE name = ?"), (name,))
            return bool(cursor.rowcount)

        return bool(self._account_write(work))

    def add_api_key(self, key: ApiKeyRecord) -> None:
        self._accounts()
        self._account_write(
            lambda cursor: cursor.execute(
                self._q(
                    "INSERT INTO lineage_api_keys (key_id, name, secret_hash, scopes, tenants,"
                    " created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, NULL)"
                ),
                (
                    key.key_id,
                    key.name,
                    key.secret_hash,
                    _json(sorted(key.scopes)),
                    _tenants_text(key.tenants),
                    _millis(key.created_at),
                ),
            )
        )

    def api_key(self, key_id: str) -> ApiKeyRecord | None:
        self._accounts()
        rows = self._fetchall(self._q(f"{_SELECT_KEYS} WHERE key_id = ?"), [key_id])
        return _api_key(rows[0]) if rows else None

    def api_keys(self) -> list[ApiKeyRecord]:
        self._accounts()
        return [_api_key(r) for r in self._fetchall(f"{_SELECT_KEYS} ORDER BY name, key_id", [])]

    def revoke_api_key(self, key_id: str, *, at: datetime) -> bool:
        self._accounts()

        def work(cursor: Any) -> bool:
            cursor.execute(
                self._q(
                    "UPDATE lineage_api_keys SET revoked_at = ?"
                    " WHERE key_id = ? AND revoked_at IS NULL"
                ),
                (_millis(at), key_id),
            )
            return bool(cursor.rowcount)

        return bool(self._account_write(work))

    def log_access(self, access: AccessRecord) -> None:
        self._accounts()
        self._account_write(
            lambda cursor: cursor.execute(
                self._q(
                    "INSERT INTO lineage_access_log (at, principal, via, query, records)"
                    " VALUES (?, ?, ?, ?, ?)"
                ),
                (_millis(access.at), access.principal, access.via, access.query, access.records),
            )
        )

    def access_log(self, *, limit: int = 100, offset: int = 0) -> list[AccessRecord]:
        self._accounts()
        rows = self._fetchall(
            self._q(
                "SELECT at, principal, via, query, records FROM lineage_access_log"
                " ORDER BY id DESC LIMIT ? OFFSET ?"
            ),
            [limit, offset],
        )
        return [
            AccessRecord(at=_time(r[0]), principal=r[1], via=r[2], query=r[3], records=r[4])
            for r in rows
        ]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


CLASS_RANK: dict[str | None, int] = {"HUMAN": 0, "AI_ASSISTED": 1, "SYNTHETIC": 2}


def entry_row(entry: Entry) -> tuple[Any, ...]:
    return (
        entry.chain_id, entry.seq, str(entry.kind), entry.pipeline, entry.run_id,
        _millis(entry.at), entry.source_topic, entry.source_partition, entry.first_offset,
        entry.last_offset, entry.count, entry.allowed_to, entry.quarantined_to, entry.root,
        entry.confirms, _json([f.to_list() for f in entry.failed]) if entry.failed else None,
        entry.prev_hash, entry.hash,
    )  # fmt: skip


def summary_rows(
    hour: int, pipeline: str, chain_id: str, groups: Iterable[tuple[tuple[Any, ...], int]]
) -> list[tuple[Any, ...]]:
    """`lineage_hop_summary` rows (`SUMMARY_COLUMNS`), in key order, of one chain's hops
    counted per (outcome, stopped_at, content class, tenant, sorted rules). The chain is in
    the row's identity (`grouping`; readers sum over it): writers of different partitions
    never upsert the same row, so none waits for another's commit."""
    rows = []
    for (outcome, stopped_at, content_class, tenant_id, rules), n in groups:
        named = list(rules)
        grouping = _json([chain_id, outcome, stopped_at, content_class, tenant_id, named])
        rows.append(
            (hour, pipeline, outcome, stopped_at, content_class, tenant_id, _json(named),
             grouping, n)
        )  # fmt: skip
    return sorted(rows, key=itemgetter(7))


def _rules(reasons: str | None) -> tuple[str, ...]:
    """The rules a stored hop's reasons (`[[rule, message], …]`, or NULL) name, sorted; a row
    edited into something else names none."""
    try:
        found = {str(reason[0]) for reason in json.loads(reasons)} if reasons else set()
    except (ValueError, TypeError, IndexError, KeyError):
        found = set()
    return tuple(sorted(found))


def hop_row(entry_id: int, index: int, hop: Hop) -> tuple[Any, ...]:
    """One hop as the stores keep it (`HopRows.store_rows`)."""
    row = HopRows.of([hop]).store_rows(entry_id)[0]
    return (entry_id, index, *row[2:])


class _RowError(Exception):
    pass


class _Probed(Exception):
    """Ends `refused_rows`' transaction, which is rolled back."""


def read_entry(row: Sequence[Any]) -> Entry | UnreadableRow:
    (chain_id, seq, kind, pipeline, run_id, at, topic, partition, first, last, count,
     allowed_to, quarantined_to, root, confirms, failed, prev_hash, hash_) = row  # fmt: skip
    try:
        _expect(chain_id, str, "chain_id")
        _expect(seq, int, "seq")
        for value, name in ((pipeline, "pipeline"), (run_id, "run_id"), (topic, "source_topic")):
            _expect(value, str, name)
        _expect(at, int, "at")
        _expect(partition, int, "source_partition")
        _expect(count, int, "count")
        _expect(prev_hash, str, "prev_hash")
        _expect(hash_, str, "hash")
        return Entry(
            chain_id=chain_id,
            seq=seq,
            kind=EntryKind(kind),
            pipeline=pipeline,
            run_id=run_id,
            at=_time(at),
            source_topic=topic,
            source_partition=partition,
            first_offset=first,
            last_offset=last,
            count=count,
            allowed_to=allowed_to,
            quarantined_to=quarantined_to,
            root=root,
            confirms=confirms,
            failed=tuple(Failure(offset=o, error=e) for o, e in _loads(failed, "failed")),
            prev_hash=prev_hash,
            hash=hash_,
        )
    except (_RowError, ValueError, TypeError) as exc:
        return UnreadableRow(
            chain_id=str(chain_id), seq=seq if type(seq) is int else None, error=first_line(exc)
        )


def leaves(rows: Iterable[Sequence[Any]]) -> list[bytes] | None:
    """The Merkle leaves of `ROWS_OF_ENTRY`'s rows, or None if a row holds a value no written
    hop has (`read_hop` then says which)."""
    try:
        return [stored_leaf(*row[1:]) for row in rows]
    except (TypeError, ValueError, AttributeError):
        return None


def read_hop(row: Sequence[Any], chain_id: str, seq: int) -> Hop | UnreadableRow:
    """A hop from `ROWS_OF_ENTRY`'s columns (index first), or why it cannot be one."""
    (index, record_id, offset, outcome, stopped_at, reasons, content_class, origin_env,
     tenant_id, source_system, generator, parents, digest) = row  # fmt: skip
    try:
        return _hop(
            record_id, offset, outcome, stopped_at, reasons, content_class, origin_env,
            tenant_id, source_system, generator, parents, digest,
        )  # fmt: skip
    except (_RowError, ValueError, TypeError) as exc:
        return UnreadableRow(
            chain_id=chain_id,
            seq=seq,
            index=index if type(index) is int else None,
            error=first_line(exc),
        )


def stored_hop(row: Sequence[Any]) -> StoredHop:
    """A hop with its batch and delivery status, from `SELECT_HOPS`' columns."""
    (chain_id, seq, pipeline, run_id, at, topic, partition, allowed_to, quarantined_to, index,
     record_id, offset, outcome, stopped_at, reasons, content_class, origin_env, tenant_id,
     source_system, generator, parents, digest, delivery_seq, failed) = row  # fmt: skip
    try:
        hop = _hop(
            record_id, offset, outcome, stopped_at, reasons, content_class, origin_env,
            tenant_id, source_system, generator, parents, digest,
        )  # fmt: skip
    except (_RowError, ValueError, TypeError) as exc:
        from lineage_guard.lineage.errors import CorruptLineageError

        raise CorruptLineageError(
            f"Lineage hop {index} of chain `{chain_id}` batch {seq} cannot be read"
            f" ({first_line(exc)}): the store was edited. Run `lineage-guard lineage verify`."
        ) from None
    delivery, error = Delivery.UNCONFIRMED, None
    if delivery_seq is not None:
        delivery = Delivery.CONFIRMED
        for failed_offset, failed_error in _loads(failed, "failed"):
            if failed_offset == hop.source_offset:
                delivery, error = Delivery.FAILED, failed_error
                break
    return StoredHop(
        hop=hop,
        pipeline=pipeline,
        run_id=run_id,
        at=_time(at),
        source_topic=topic,
        source_partition=partition,
        destination=allowed_to if hop.outcome is Outcome.DELIVERED else quarantined_to,
        chain_id=chain_id,
        seq=seq,
        index=index,
        delivery=delivery,
        delivery_error=error,
    )


def _hop(
    record_id: Any, offset: Any, outcome: Any, stopped_at: Any, reasons: Any,
    content_class: Any, origin_env: Any, tenant_id: Any, source_system: Any, generator: Any,
    parents: Any, digest: Any,
) -> Hop:  # fmt: skip
    # Runs once per row read (trace, verify): check the common case in one C-level pass, and
    # name the offending column only when it fails.
    texts = (record_id, content_class, origin_env, tenant_id, source_system, generator)
    if not _TEXT_TYPES.issuperset(map(type, texts)):
        for value, name in zip(texts, _TEXT_COLUMNS, strict=True):
            if value is not None:
                _expect(value, str, name)
    if type(offset) is not int:
        _expect(offset, int, "source_offset")
    if not isinstance(digest, bytes | bytearray | memoryview):
        raise _RowError(f"`digest` is {digest!r}, not bytes")
    reason_list: tuple[Reason, ...] = ()
    if reasons is not None:
        pairs = _loads(reasons, "reasons")
        if not all(
            isinstance(p, list) and len(p) == 2 and all(type(x) is str for x in p) for p in pairs
        ):
            raise _RowError(f"`reasons` is {reasons!r}, not a list of [rule, message] pairs")
        reason_list = tuple(Reason(rule=rule, message=message) for rule, message in pairs)
    parent_ids: tuple[str, ...] = ()
    if parents is not None:
        parent_ids = tuple(_loads(parents, "parents"))
        if not all(type(p) is str for p in parent_ids):
            raise _RowError(f"`parents` is {parents!r}, not a list of strings")
    known = _OUTCOMES.get(outcome) if type(outcome) is str else None
    stage = _STAGES.get(stopped_at) if type(stopped_at) is str else None
    return Hop(
        record_id=record_id,
        source_offset=offset,
        outcome=known if known is not None else Outcome(outcome),  # raises for a bad value
        stopped_at=stage if stage is not None or stopped_at is None else Stage(stopped_at),
        reasons=reason_list,
        content_class=content_class,
        origin_env=origin_env,
        tenant_id=tenant_id,
        source_system=source_system,
        generator=generator,
        parent_record_ids=parent_ids,
        digest=digest.hex(),
    )


_TEXT_TYPES = frozenset({str, type(None)})
_TEXT_COLUMNS = ("record_id", "content_class", "origin_env", "tenant_id", "source_system",
                 "generator")  # fmt: skip
_OUTCOMES = {str(outcome): outcome for outcome in Outcome}
_STAGES = {str(stage): stage for stage in Stage}


def _checkpoint(row: Sequence[Any]) -> Checkpoint:
    at, run_id, heads, key, signature = row
    if signature.startswith("{"):  # a chained checkpoint: its DSSE envelope
        checkpoint = read_envelope(signature)
        columns = (_time(at), run_id, [h.to_dict() for h in checkpoint.heads], key)
        if columns != (checkpoint.at, checkpoint.run_id, json.loads(heads), checkpoint.key_id):
            raise ValueError("its columns differ from the envelope it signed")
        return checkpoint
    return Checkpoint(
        at=_time(at),
        run_id=run_id,
        heads=tuple(
            ChainHead(chain_id=h["chain_id"], seq=h["seq"], hash=h["hash"])
            for h in json.loads(heads)
        ),
        key_id=key,
        signature=signature,
    )


def _checkpoint_break(kind: BreakKind, text: str) -> BrokenLink:
    return BrokenLink(chain_id="*", seq=None, kind=kind, description=text)


def _expect(value: Any, kind: type, name: str) -> None:
    if type(value) is not kind:
        raise _RowError(f"`{name}` is {value!r}, not a {kind.__name__}")


def _loads(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, str):
        raise _RowError(f"`{name}` is {value!r}, not JSON text")
    try:
        items = json.loads(value)
    except ValueError:
        raise _RowError(f"`{name}` is not JSON: {value[:40]!r}") from None
    if not isinstance(items, list):
        raise _RowError(f"`{name}` is {items!r}, not a list")
    return items


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _millis(at: datetime) -> int:
    return (at - _EPOCH) // _MS


def _time(millis: int) -> datetime:
    return _EPOCH + millis * _MS


def _json(value: Any) -> str:
    return compact_json(value).decode("utf-8")


# -- rows of the account tables ---------------------------------------------------------------

_SELECT_USERS = "SELECT name, password_hash, role, tenants, created_at FROM lineage_users"
_SELECT_KEYS = (
    "SELECT key_id, name, secret_hash, scopes, tenants, created_at, revoked_at"
    " FROM lineage_api_keys"
)


def _tenants_text(tenants: frozenset[str] | None) -> str | None:
    return None if tenants is None else _json(sorted(tenants))


def _tenants(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(json.loads(text))


def _user(row: Sequence[Any]) -> UserRecord:
    return UserRecord(
        name=row[0],
        password_hash=row[1],
        role=row[2],
        tenants=_tenants(row[3]),
        created_at=_time(row[4]),
    )


def _api_key(row: Sequence[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row[0],
        name=row[1],
        secret_hash=row[2],
        scopes=frozenset(json.loads(row[3])),
        tenants=_tenants(row[4]),
        created_at=_time(row[5]),
        revoked_at=None if row[6] is None else _time(row[6]),
    )


def _window(since: datetime | None, until: datetime | None) -> tuple[list[str], list[Any]]:
    """The conditions (and their parameters) of batches written with `since <= at < until`."""
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append("e.at >= ?")
        params.append(_millis(since))
    if until is not None:
        where.append("e.at < ?")
        params.append(_millis(until))
    return where, params


def _tenant_clause(tenants: Collection[str] | None) -> tuple[str, list[Any]]:
    """` WHERE h.tenant_id IN (…)` for a tenant-bound reader (none: `h.tenant_id IS NULL`
    never matches), or nothing."""
    if tenants is None:
        return "", []
    if not tenants:
        return " WHERE 1 = 0", []
    ordered = sorted(tenants)
    return f" WHERE h.tenant_id IN ({', '.join('?' for _ in ordered)})", list(ordered)
