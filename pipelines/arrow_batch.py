"""The micro-batch as one Arrow RecordBatch: the shape the guard chain runs on.

A `GuardBatch` holds the messages of one source partition (or one input file), in offset
order, as one `pyarrow.RecordBatch`; each stage of the chain (`guard_chain`) adds its columns:

=====================  ==========================  ===========================================
added by               column                      Arrow type
=====================  ==========================  ===========================================
the reader             offset                      int64 (files: the record's index)
                       key, value                  binary (None for records read from files)
                       timestamp_ms                int64
                       error                       string: why the file reader could not read it
decode                 schema                      string: the writer schema's full name
every checking stage   stopped_at                  string: the stage that stopped it (null: allowed)
                       blocked                     bool: a sink policy refused it
=====================  ==========================  ===========================================

Validation builds the contract's columns (`contract.columns`) from the decoded records and
judges them whole; the hop rows (`guard_chain.HopRows`) are columns too.

Beside the Arrow batch travel, as Python values: the decoded records (`records`, for the
writers that need them: file outputs, `Records()`; Kafka outputs forward the message bytes)
and the violations of the rows that were stopped (`violations`, by row: a message names the
record as it came, which may be text Arrow cannot hold, such as a lone surrogate from JSON).
`items()` is the compatibility view: the same batch as the `items.Batch` of per-record
`Item`s that the public transforms take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lineage_guard.contract.verdicts import Violation
from lineage_guard.items import Batch, Item, Source

SOURCE_FIELDS = (
    pa.field("offset", pa.int64(), nullable=False),
    pa.field("key", pa.binary()),
    pa.field("value", pa.binary()),
    pa.field("timestamp_ms", pa.int64()),
    pa.field("error", pa.string()),
)
VERDICT_FIELDS = (
    pa.field("stopped_at", pa.string()),
    pa.field("blocked", pa.bool_(), nullable=False),
)


# The columns an `Item` is made of (`GuardBatch.items_at`).
_ITEM_COLUMNS = (
    "offset", "key", "value", "timestamp_ms", "schema", "error", "stopped_at", "blocked",
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class GuardBatch:
    """The messages of one partition (or file) and what the stages found out about them."""

    topic: str
    partition: int
    columns: pa.RecordBatch
    records: tuple[Any, ...] | None = None  # decoded values (None where not decodable)
    headers: tuple[Any, ...] | None = None  # Kafka headers per message, when read from Kafka
    violations: Mapping[int, tuple[Violation, ...]] = field(default_factory=dict)  # by row

    def __len__(self) -> int:
        return self.columns.num_rows

    @property
    def next_offset(self) -> int:
        """The offset to commit once this batch is written."""
        return int(self.columns.column("offset")[-1].as_py()) + 1

    def column(self, name: str) -> pa.Array:
        return self.columns.column(name)

    def has(self, name: str) -> bool:
        return self.columns.schema.get_field_index(name) >= 0

    def with_columns(self, **arrays: pa.Array) -> GuardBatch:
        """This batch with `arrays` added, or replacing the columns of the same name."""
        columns = self.columns
        for name, array in arrays.items():
            at = columns.schema.get_field_index(name)
            if at >= 0:
                columns = columns.set_column(at, name, array)
            else:
                columns = columns.append_column(name, array)
        return GuardBatch(
            topic=self.topic,
            partition=self.partition,
            columns=columns,
            records=self.records,
            headers=self.headers,
            violations=self.violations,
        )

    def with_records(self, records: Sequence[Any]) -> GuardBatch:
        return GuardBatch(
            topic=self.topic,
            partition=self.partition,
            columns=self.columns,
            records=tuple(records),
            headers=self.headers,
            violations=self.violations,
        )

    def with_violations(self, violations: Mapping[int, tuple[Violation, ...]]) -> GuardBatch:
        return GuardBatch(
            topic=self.topic,
            partition=self.partition,
            columns=self.columns,
            records=self.records,
            headers=self.headers,
            violations=violations,
        )

    def take(self, rows: Sequence[int]) -> GuardBatch:
        """The batch of `rows` only (in the order given), with their records, headers and
        violations."""
        picked = list(rows)
        at = {row: k for k, row in enumerate(picked)}
        return GuardBatch(
            topic=self.topic,
            partition=self.partition,
            columns=self.columns.take(pa.array(picked, pa.int64())),
            records=tuple(self.records[i] for i in picked) if self.records is not None else None,
            headers=tuple(self.headers[i] for i in picked) if self.headers is not None else None,
            violations={at[i]: v for i, v in self.violations.items() if i in at},
        )

    @classmethod
    def of_records(
        cls,
        topic: str,
        records: Sequence[Any],
        *,
        partition: int = 0,
        offsets: Sequence[int] | None = None,
    ) -> GuardBatch:
        """A batch of decoded records (dicts), at `offsets` (default 0, 1, …): what your own
        transform emits for the guard's stages to check."""
        if offsets is None:
            return from_records(topic, partition, records)
        return from_messages(topic, partition, offsets, [None] * len(records)).with_records(records)

    def allowed(self) -> GuardBatch:
        """The rows no stage stopped (all of them: this batch itself)."""
        import numpy as np

        rows = np.flatnonzero(np.asarray(self.allowed_mask(), dtype=bool))
        return self if len(rows) == len(self) else self.take(rows.tolist())

    def stopped_at(self) -> list[str | None]:
        """Per row, the stage that stopped it (None: allowed so far)."""
        if not self.has("stopped_at"):
            return [None] * len(self)
        stopped: list[str | None] = self.column("stopped_at").to_pylist()
        return stopped

    def blocked(self) -> list[bool]:
        if not self.has("blocked"):
            return [False] * len(self)
        return [bool(b) for b in self.column("blocked").to_pylist()]

    def item(self, row: int) -> Item:
        """One row as an `Item`: for the rare paths that handle a record on its own (a record
        a destination refused, a quarantine entry)."""
        [item] = self.items_at([row])
        return item

    def items_at(self, rows: Sequence[int]) -> list[Item]:
        """`rows` as `Item`s, in the order given: each column is read once for all of them
        (a quarantined batch's rows, which the Kafka sink sizes and sends one by one)."""
        if not rows:
            return []
        picked = self.columns.select([name for name in _ITEM_COLUMNS if self.has(name)]).take(
            pa.array(rows, pa.int64())
        )
        values = {name: picked.column(name).to_pylist() for name in picked.schema.names}
        none = [None] * len(rows)
        return [
            Item(
                source=Source(
                    topic=self.topic,
                    partition=self.partition,
                    offset=values["offset"][k],
                    key=values["key"][k],
                    value=values["value"][k],
                    headers=self.headers[row] if self.headers is not None else None,
                    timestamp_ms=values["timestamp_ms"][k],
                ),
                record=self.records[row] if self.records is not None else None,
                schema=values.get("schema", none)[k],
                error=values["error"][k],
                stopped_at=values.get("stopped_at", none)[k],
                blocked=bool(values.get("blocked", none)[k]),
                violations=self.violations.get(row, ()),
            )
            for k, row in enumerate(rows)
        ]

    def allowed_mask(self) -> pa.BooleanArray:
        import pyarrow.compute as pc

        if not self.has("stopped_at"):
            return pa.repeat(True, len(self))
        return pc.is_null(self.column("stopped_at"))

    # -- compatibility with the per-record view ----------------------------------------------

    def items(self) -> Batch:
        """The same batch as `items.Batch` (one `Item` per record, each with its record: a
        row the Rust reader read into columns is read by fastavro here)."""
        if self.has("read"):
            from lineage_guard.guard_chain import with_records

            self = with_records(self)
        items = tuple(self.items_at(range(len(self))))
        return Batch(topic=self.topic, partition=self.partition, items=items)


def from_messages(
    topic: str,
    partition: int,
    offsets: Sequence[int],
    values: Sequence[bytes | None],
    *,
    keys: Sequence[bytes | None] | None = None,
    timestamps_ms: Sequence[int | None] | None = None,
    headers: Sequence[Any] | None = None,
) -> GuardBatch:
    """A batch of Kafka messages (or any bytes at positions) before decoding."""
    n = len(offsets)
    columns = pa.RecordBatch.from_arrays(
        [
            _int64s(offsets),
            pa.array(keys if keys is not None else [None] * n, pa.binary()),
            pa.array(values, pa.binary()),
            pa.array(timestamps_ms if timestamps_ms is not None else [None] * n, pa.int64()),
            pa.nulls(n, pa.string()),
        ],
        schema=pa.schema(SOURCE_FIELDS),
    )
    return GuardBatch(
        topic=topic,
        partition=partition,
        columns=columns,
        headers=tuple(headers) if headers is not None else None,
    )


def from_kafka(topic: str, partition: int, messages: Sequence[Any]) -> GuardBatch:
    """A batch of confluent-kafka `Message`s (data messages of one partition, in order)."""
    headers = [m.headers() for m in messages]
    return from_messages(
        topic,
        partition,
        [m.offset() for m in messages],
        [m.value() for m in messages],
        keys=[m.key() for m in messages],
        timestamps_ms=[m.timestamp()[1] for m in messages],
        headers=headers if any(h is not None for h in headers) else None,
    )


def from_file_rows(
    path: str, indices: Sequence[int], records: Sequence[Any], errors: Sequence[str | None]
) -> GuardBatch:
    """Records read from a file (`error`: why the reader could not read one), at their
    indices in the file."""
    batch = from_messages(path, 0, indices, [None] * len(indices)).with_records(records)
    if any(e is not None for e in errors):
        batch = batch.with_columns(error=pa.array(errors, pa.string()))
    return batch


def concat(batches: Sequence[GuardBatch]) -> GuardBatch:
    """Batches of the same partition, in order, as one (their columns must match)."""
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    table = pa.Table.from_batches([b.columns for b in batches]).combine_chunks()
    [columns] = table.to_batches() or [first.columns.slice(0, 0)]
    records = None
    if any(b.records is not None for b in batches):
        records = tuple(
            r for b in batches for r in (b.records if b.records is not None else (None,) * len(b))
        )
    headers = None
    if any(b.headers is not None for b in batches):
        headers = tuple(
            h for b in batches for h in (b.headers if b.headers is not None else (None,) * len(b))
        )
    violations: dict[int, tuple[Violation, ...]] = {}
    base = 0
    for b in batches:
        violations.update((base + i, v) for i, v in b.violations.items())
        base += len(b)
    return GuardBatch(
        topic=first.topic,
        partition=first.partition,
        columns=columns,
        records=records,
        headers=headers,
        violations=violations,
    )


def from_records(topic: str, partition: int, records: Sequence[Any]) -> GuardBatch:
    """A batch of records already decoded (read from a file, or given by a caller), at
    positions 0, 1, …; their digests are their canonical JSON's (`guard_chain.digests`)."""
    n = len(records)
    return from_messages(topic, partition, range(n), [None] * n).with_records(records)


def _int64s(values: Sequence[int]) -> pa.Array:
    if isinstance(values, range):  # Arrow reads a range one Python int at a time
        import numpy as np

        return pa.array(np.arange(values.start, values.stop, values.step, dtype=np.int64))
    return pa.array(values, pa.int64())


def from_items(batch: Batch) -> GuardBatch:
    """An `items.Batch` (any stage's output) as a `GuardBatch`, verdicts included."""
    items = batch.items
    sources = [item.source for item in items]
    gb = from_messages(
        batch.topic,
        batch.partition,
        [s.offset for s in sources],
        [s.value for s in sources],
        keys=[s.key for s in sources],
        timestamps_ms=[s.timestamp_ms for s in sources],
        headers=[s.headers for s in sources],
    )
    gb = gb.with_columns(error=pa.array([item.error for item in items], pa.string()))
    if any(item.schema is not None for item in items):
        gb = gb.with_columns(schema=pa.array([item.schema for item in items], pa.string()))
    if any(item.record is not None or item.source.value is None for item in items):
        gb = gb.with_records([item.record for item in items])
    if any(item.stopped_at is not None for item in items):
        gb = gb.with_columns(
            stopped_at=pa.array([item.stopped_at for item in items], pa.string()),
            blocked=pa.array([item.blocked for item in items], pa.bool_()),
        ).with_violations({i: item.violations for i, item in enumerate(items) if item.violations})
    return gb
