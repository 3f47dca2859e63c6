"""Micro-batches as Arrow columns: the same columns as `contract.records`, built in bulk.

`ArrowFlattener.flatten` returns one `pyarrow.Array` per column of `records.COLUMNS`, with
the same values `records.Flattener` gives as Python lists (the reference, which GX runs on):

- the fast path reads each field of the whole batch with one comprehension and lets Arrow
  convert and type-check the column in C (a column whose values are not all of the expected
  type makes Arrow refuse it, or infer another type);
- a batch the fast path cannot take exactly (a value of the wrong type anywhere, a record that
  is not a dict, a timestamp finer than a millisecond) is flattened by `records.Flattener`,
  which names each wrong value in a `wrong_type` violation, and its lists become Arrow arrays.

Avro-decoded records always take the fast path: their types are fixed by the schema. The
parents' ranks (`ParentRanks`) stay an input: the fast path reads and updates them only once
the whole batch has been accepted, in record order, exactly as the reference does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lineage_guard.contract.records import (
    CLASS_RANK,
    COLUMNS,
    EARLIEST_MILLIS,
    Flattener,
    ParentRanks,
)
from lineage_guard.contract.verdicts import Violation

ArrowColumns = dict[str, pa.Array]
TYPES: dict[str, pa.DataType] = {
    **{name: pa.string() for name in COLUMNS},
    "provenance_present": pa.bool_(),
    "generated_at": pa.float64(),
    "class_rank": pa.int8(),
    "max_parent_class_rank": pa.int8(),
}
_NO_PROVENANCE = dict.fromkeys(
    (
        "content_class",
        "origin_env",
        "source_system",
        "generator",
        "generated_at",
        "disclosure",
        "parent_record_ids",
        "digital_source_type",
    )
)
_NO_GENERATOR = dict.fromkeys(["name", "parameters_sha256"])
_NONE = type(None)
_MAPPINGS = {dict, _NONE}
_UTC_MICROS = pa.timestamp("us", tz="UTC")


class _Refused(Exception):
    """The fast path cannot build this batch exactly; the reference flattener will."""


class ArrowFlattener:
    """Turns records into Arrow columns, collecting `wrong_type` violations per row index."""

    def __init__(self, parents: ParentRanks | None = None) -> None:
        self.reference = Flattener(parents)
        self.parents = self.reference.parents

    def flatten(
        self, records: Sequence[Any], known: Mapping[str, int] | None = None
    ) -> tuple[ArrowColumns, dict[int, list[Violation]]]:
        """As `records.Flattener.flatten`: parents' ranks from `known` when given, else from
        the records seen so far."""
        try:
            return self._fast(records, known), {}
        except _Refused:
            lists, errors = self.reference.flatten(records, known)
            return {name: pa.array(lists[name], type=TYPES[name]) for name in COLUMNS}, errors

    def _fast(self, records: Sequence[Any], known: Mapping[str, int] | None = None) -> ArrowColumns:
        if not set(map(type, records)) <= {dict}:
            raise _Refused
        provenances = _field(records, "provenance")
        if not set(map(type, provenances)) <= _MAPPINGS:
            raise _Refused
        provs = [_NO_PROVENANCE if p is None else p for p in provenances]
        generators = _field(provs, "generator")
        if not set(map(type, generators)) <= _MAPPINGS:
            raise _Refused
        gens = [_NO_GENERATOR if g is None else g for g in generators]

        record_ids = _field(records, "record_id")
        classes = _field(provs, "content_class")
        columns: ArrowColumns = {
            "record_id": _strings(record_ids),
            "tenant_id": _strings(_field(records, "tenant_id")),
            "provenance_present": pa.array([p is not None for p in provenances], pa.bool_()),
            "content_class": _strings(classes),
            "origin_env": _strings(_field(provs, "origin_env")),
            "source_system": _strings(_field(provs, "source_system")),
            "generator_name": _strings(_field(gens, "name")),
            "parameters_sha256": _strings(_field(gens, "parameters_sha256")),
            "generated_at": _epoch_millis(_field(provs, "generated_at")),
            "disclosure": _strings(_field(provs, "disclosure")),
            "digital_source_type": _strings(_field(provs, "digital_source_type")),
        }
        parent_lists = _field(provs, "parent_record_ids")
        _check_parent_lists(parent_lists)
        # Every column is accepted: only now may the parents' ranks be read and updated.
        ranks = [CLASS_RANK.get(c) for c in classes]
        columns["class_rank"] = pa.array(ranks, pa.int8())
        columns["max_parent_class_rank"] = pa.array(
            self._parent_ranks(record_ids, ranks, parent_lists, known), pa.int8()
        )
        return columns

    def _parent_ranks(
        self,
        record_ids: list[Any],
        ranks: list[int | None],
        parent_lists: list[Any],
        known: Mapping[str, int] | None,
    ) -> list[int | None]:
        """Highest known parent rank per row; without `known`, remembers each ranked record,
        in order."""
        out: list[int | None] = [None] * len(ranks)
        if known is not None:
            for i, parent_ids in enumerate(parent_lists):
                if parent_ids:
                    found = [known[p] for p in parent_ids if p in known]
                    out[i] = max(found) if found else None
            return out
        parents = self.parents
        for i, (rank, parent_ids) in enumerate(zip(ranks, parent_lists, strict=True)):
            if parent_ids:
                out[i] = parents.max_rank(parent_ids)
            if rank and record_ids[i] is not None:
                parents.remember(record_ids[i], rank)
        return out


def _field(objects: Sequence[Any], key: str) -> list[Any]:
    """`key` of every object (None where missing); C-speed when every object has it."""
    try:
        return list(map(itemgetter(key), objects))
    except KeyError:
        return [o.get(key) for o in objects]


def _strings(values: list[Any]) -> pa.Array:
    """A string column if every value is a str (valid Unicode) or None, else `_Refused`."""
    try:
        array = pa.array(values)
    except (pa.ArrowException, UnicodeError, OverflowError, TypeError, ValueError) as exc:
        raise _Refused from exc
    if array.type == pa.string():
        return array
    if array.type == pa.null():
        return array.cast(pa.string())
    raise _Refused


def _epoch_millis(values: list[Any]) -> pa.Array:
    """`records.to_epoch_millis` for a column of datetimes (or of ints), as float64."""
    kinds = {type(v) for v in values} - {_NONE}
    try:
        if not kinds:
            return pa.nulls(len(values), pa.float64())
        if kinds == {datetime}:
            micros = pa.array(values, _UTC_MICROS).cast(pa.int64())
            millis = pc.divide(micros, 1000)  # integer division
            if not pc.all(pc.equal(pc.multiply(millis, 1000), micros)).as_py():
                raise _Refused  # finer than a millisecond: the reference rounds it
            return millis.cast(pa.float64())
        if kinds == {int}:
            millis = pa.array(values, pa.int64())
            if pc.min(millis).as_py() < EARLIEST_MILLIS:
                raise _Refused  # before year 1: the reference reports it
            return millis.cast(pa.float64(), safe=False)
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
        raise _Refused from exc
    raise _Refused  # strings, floats, mixed kinds: the reference parses them one by one


def _check_parent_lists(values: list[Any]) -> None:
    if not {type(v) for v in values} <= {list, _NONE}:
        raise _Refused
    try:
        array = pa.array(values)
    except (pa.ArrowException, UnicodeError, OverflowError, TypeError, ValueError) as exc:
        raise _Refused from exc
    if array.type not in (pa.null(), pa.list_(pa.string()), pa.list_(pa.null())):
        raise _Refused
