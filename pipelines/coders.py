"""A deterministic Beam coder for the guard's micro-batches (`Batch`), instead of pickles.

A batch becomes a tree of primitives (tuples, lists, dicts, str, bytes, int, float, bool,
None) that Beam's own primitives coder writes in its deterministic mode: dict keys sorted, no
pickle fallback. Values a decoded record may hold that have no primitive form (datetimes from
Avro's `timestamp-millis`, dates, times, decimals, UUIDs) are written as tagged tuples;
decoded records hold lists, never tuples, so a tuple is always a tag. The same batch always
encodes to the same bytes, so batches and their positions can serve as keys.

One difference to the value encoded: a decoded record's keys come back sorted (JSON objects
and Avro records are unordered).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from apache_beam.coders import coder_impl
from apache_beam.coders.coders import Coder

from lineage_guard.contract.verdicts import Violation
from lineage_guard.items import Batch, Item, Source

_SAMPLE = 32  # items whose size `estimate_size` looks at
_ITEM_ALLOWANCE = 256  # bytes per item on top of its message, for `estimate_size`
_FORMAT = 1  # first element of every encoded batch: bump when the layout changes


def _value(value: Any) -> Any:
    """A record's value as primitives (see the module docstring)."""
    kind = type(value)
    if kind is int and not -(2**63) <= value < 2**63:
        return ("int", str(value))  # JSON allows integers of any size
    if value is None or kind in (str, int, float, bool, bytes):
        return value
    if kind is dict:
        return {k: _value(v) for k, v in value.items()}
    if kind is list:
        return [_value(v) for v in value]
    if kind is tuple:
        return ("tuple", [_value(v) for v in value])
    if kind is datetime:
        return ("datetime", value.isoformat())
    if kind is date:
        return ("date", value.isoformat())
    if kind is time:
        return ("time", value.isoformat())
    if kind is Decimal:
        return ("decimal", str(value))
    if kind is uuid.UUID:
        return ("uuid", str(value))
    if isinstance(value, dict):  # e.g. an OrderedDict
        return {k: _value(v) for k, v in value.items()}
    raise TypeError(f"BatchCoder cannot encode a record value of type `{kind.__name__}`.")


_TAGS: dict[str, Any] = {
    "int": int,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "decimal": Decimal,
    "uuid": uuid.UUID,
}


def _unvalue(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return {k: _unvalue(v) for k, v in value.items()}
    if kind is list:
        return [_unvalue(v) for v in value]
    if kind is tuple:
        tag, payload = value
        if tag == "tuple":
            return tuple(_unvalue(v) for v in payload)
        return _TAGS[tag](payload)
    return value


def _item(item: Item) -> tuple[Any, ...]:
    s = item.source
    headers = None if s.headers is None else [[k, v] for k, v in s.headers]
    return (
        s.topic,
        s.partition,
        s.offset,
        s.key,
        s.value,
        headers,
        s.timestamp_ms,
        None if item.record is None else _value(item.record),
        item.schema,
        item.error,
        None if item.stopped_at is None else str(item.stopped_at),
        item.blocked,
        [[v.rule, v.column, v.message] for v in item.violations],
    )


def _unitem(row: tuple[Any, ...]) -> Item:
    (
        topic,
        partition,
        offset,
        key,
        value,
        headers,
        timestamp_ms,
        record,
        schema,
        error,
        stopped_at,
        blocked,
        violations,
    ) = row
    source = Source(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        headers=None if headers is None else [(k, v) for k, v in headers],
        timestamp_ms=timestamp_ms,
    )
    return Item(
        source=source,
        record=None if record is None else _unvalue(record),
        schema=schema,
        error=error,
        stopped_at=_stage(stopped_at),
        blocked=blocked,
        violations=tuple(Violation(rule=r, column=c, message=m) for r, c, m in violations),
    )


def _stage(name: str | None) -> Any:
    if name is None:
        return None
    from lineage_guard.lineage.events import Stage

    return Stage(name)


class BatchCoder(Coder):
    """Encodes `Batch` deterministically (no pickle); registered for `Batch` on import of
    `lineage_guard.transforms`."""

    def __init__(self) -> None:
        self._primitives = coder_impl.FastPrimitivesCoderImpl(
            None, requires_deterministic_step_label="lineage_guard.BatchCoder"
        )

    def encode(self, batch: Batch) -> bytes:
        tree = (_FORMAT, batch.topic, batch.partition, [_item(i) for i in batch.items])
        encoded: bytes = self._primitives.encode(tree)
        return encoded

    def decode(self, encoded: bytes) -> Batch:
        version, topic, partition, items = self._primitives.decode(encoded)
        if version != _FORMAT:
            raise ValueError(f"BatchCoder: unknown batch format {version}.")
        return Batch(topic=topic, partition=partition, items=tuple(_unitem(i) for i in items))

    def estimate_size(self, batch: Batch) -> int:
        """A cheap estimate, for the runner's size metrics: the messages' bytes plus a fixed
        allowance per item. (Beam's default encodes the whole batch, for every sampled
        element: a third of the guard's time went there.)"""
        items = batch.items
        sample = items[:: max(1, len(items) // _SAMPLE)]  # every n-th item, at most ~_SAMPLE
        sampled = sum(len(i.source.value or b"") + len(i.source.key or b"") for i in sample)
        per_item = _ITEM_ALLOWANCE + sampled // max(1, len(sample))
        return 16 + len(batch.topic) + per_item * len(items)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return Batch

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))
