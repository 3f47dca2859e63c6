"""A deterministic Beam coder for the guard's micro-batches (`GuardBatch`), instead of pickles.

A batch's Arrow columns travel as one Arrow IPC stream; its decoded records (rows read from
files, or by fastavro) become a tree of primitives (tuples, lists, dicts, str, bytes, int,
float, bool, None) that Beam's own primitives coder writes in its deterministic mode: dict
keys sorted, no pickle fallback. Values a decoded record may hold that have no primitive
form (datetimes from Avro's `timestamp-millis`, dates, times, decimals, UUIDs) are written as
tagged tuples; decoded records hold lists, never tuples, so a tuple is always a tag.

One difference to the value encoded: a decoded record's keys come back sorted (JSON objects
and Avro records are unordered).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import pyarrow as pa
from apache_beam.coders import coder_impl
from apache_beam.coders.coders import Coder

from lineage_guard.arrow_batch import GuardBatch
from lineage_guard.contract.verdicts import Violation

_ITEM_ALLOWANCE = 256  # bytes per item on top of its message, for `estimate_size`
_FORMAT = 2  # first element of every encoded batch: bump when the layout changes


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


class BatchCoder(Coder):
    """Encodes `GuardBatch` deterministically (no pickle): its Arrow columns as one Arrow IPC
    stream, the records, headers and violations beside them as primitives. Registered for
    `GuardBatch` on import of `lineage_guard.transforms`."""

    def __init__(self) -> None:
        self._primitives = coder_impl.FastPrimitivesCoderImpl(
            None, requires_deterministic_step_label="lineage_guard.BatchCoder"
        )

    def encode(self, batch: GuardBatch) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.columns.schema) as writer:
            writer.write_batch(batch.columns)
        records = None if batch.records is None else [_value(r) for r in batch.records]
        headers = None
        if batch.headers is not None:
            headers = [None if h is None else [[k, v] for k, v in h] for h in batch.headers]
        violations = [
            [row, [[v.rule, v.column, v.message] for v in found]]
            for row, found in sorted(batch.violations.items())
        ]
        tree = (
            _FORMAT,
            batch.topic,
            batch.partition,
            sink.getvalue().to_pybytes(),
            records,
            headers,
            violations,
        )
        encoded: bytes = self._primitives.encode(tree)
        return encoded

    def decode(self, encoded: bytes) -> GuardBatch:
        version, topic, partition, ipc, records, headers, violations = self._primitives.decode(
            encoded
        )
        if version != _FORMAT:
            raise ValueError(f"BatchCoder: unknown batch format {version}.")
        return GuardBatch(
            topic=topic,
            partition=partition,
            columns=pa.ipc.open_stream(ipc).read_next_batch(),
            records=None if records is None else tuple(_unvalue(r) for r in records),
            headers=None
            if headers is None
            else tuple(None if h is None else [(k, v) for k, v in h] for h in headers),
            violations={
                row: tuple(Violation(rule=r, column=c, message=m) for r, c, m in found)
                for row, found in violations
            },
        )

    def estimate_size(self, batch: GuardBatch) -> int:
        """A cheap estimate, for the runner's size metrics: the columns' buffers plus a fixed
        allowance per record. (Beam's default encodes the whole batch, for every sampled
        element.)"""
        return 16 + len(batch.topic) + batch.columns.nbytes + _ITEM_ALLOWANCE * len(batch)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return GuardBatch

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))
