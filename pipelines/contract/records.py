"""Flattens decoded CRM records into the columns the expectation suites check.

Pure core: no GX, no Beam. Each record becomes one row of these columns (a suite in
`expectations/` may use any of them):

=======================  =================================================
column                   value
=======================  =================================================
record_id                str or None
tenant_id                str or None
provenance_present       True when the record has a `provenance` object
content_class            str or None
origin_env               str or None
source_system            str or None
generator_name           str or None (None when `generator` is null)
parameters_sha256        str or None
generated_at             epoch milliseconds (float) or None
disclosure               str or None
digital_source_type      str or None (None also for records written before the field)
class_rank               0 HUMAN, 1 AI_ASSISTED, 2 SYNTHETIC, None otherwise
max_parent_class_rank    highest rank among the known parents, or None
=======================  =================================================

A value of the wrong type (a number where a string belongs, an unparseable timestamp) becomes
None plus a `wrong_type` violation, so the suites only ever see well-typed columns.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from lineage_guard.contract.verdicts import Violation

CLASS_RANK = {"HUMAN": 0, "AI_ASSISTED": 1, "SYNTHETIC": 2}
COLUMNS = (
    "record_id",
    "tenant_id",
    "provenance_present",
    "content_class",
    "origin_env",
    "source_system",
    "generator_name",
    "parameters_sha256",
    "generated_at",
    "disclosure",
    "digital_source_type",
    "class_rank",
    "max_parent_class_rank",
)
# Where each checked column lives in the record, for messages.
FIELD_OF_COLUMN = {
    "record_id": "record_id",
    "tenant_id": "tenant_id",
    "provenance_present": "provenance",
    "content_class": "provenance.content_class",
    "origin_env": "provenance.origin_env",
    "source_system": "provenance.source_system",
    "generator_name": "provenance.generator.name",
    "parameters_sha256": "provenance.generator.parameters_sha256",
    "generated_at": "provenance.generated_at",
    "disclosure": "provenance.disclosure",
    "digital_source_type": "provenance.digital_source_type",
    "class_rank": "provenance.content_class",
    "max_parent_class_rank": "provenance.parent_record_ids",
}


class ParentRanks:
    """Content-class ranks of records seen so far, to check `parent_record_ids` in one
    sequential pass (`lineage-guard validate FILE…`). The pipeline does not use it: there, a
    parent's class comes from the run's own records and the lineage store (`stages.Parents`),
    so a verdict never depends on which worker saw the parent.

    Only AI_ASSISTED and SYNTHETIC records are kept (a HUMAN parent never constrains its
    child); the oldest entries are dropped past `capacity`, so memory stays bounded on
    endless streams. A parent not seen (yet, or any more) is not checked.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ranks: OrderedDict[str, int] = OrderedDict()

    def max_rank(self, parent_ids: Iterable[str]) -> int | None:
        ranks = [self._ranks[p] for p in parent_ids if p in self._ranks]
        return max(ranks) if ranks else None

    def remember(self, record_id: str, rank: int) -> None:
        if rank <= 0:
            return
        self._ranks[record_id] = rank
        if len(self._ranks) > self.capacity:
            self._ranks.popitem(last=False)


def as_mapping(value: Any) -> Mapping[str, Any]:
    """`value` if it is an object, else an empty mapping (for reading optional parts)."""
    # `type` first: the common case, without the ABC's slower `isinstance`
    return value if type(value) is dict or isinstance(value, Mapping) else {}


def provenance_of(record: Any) -> Mapping[str, Any]:
    """The record's provenance object, or an empty mapping when it is missing or not one."""
    return as_mapping(as_mapping(record).get("provenance"))


def record_id_of(record: Any) -> str | None:
    """The record's id if it has a usable one, for naming it in messages and lineage."""
    if type(record) is dict or isinstance(record, Mapping):  # `type` first: the common case
        value = record.get("record_id")
        if isinstance(value, str):
            return value
    return None


# 0001-01-01T00:00:00Z: no calendar (Python's, ISO-8601's) goes further back.
EARLIEST_MILLIS = -62_135_596_800_000


def to_epoch_millis(value: Any) -> float | None:
    """Avro timestamp-millis as fastavro returns it (datetime), epoch millis, or ISO-8601.

    Epoch millis are taken as they are, also past year 9999 (legal Avro longs, judged by the
    contract's rules); before year 1, or past a float's range, they are no timestamp
    (`ValueError`, `OverflowError`).
    """
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return float(round(moment.timestamp() * 1000))
    if isinstance(value, int | float) and not isinstance(value, bool):
        millis = float(value)  # OverflowError past a float's range
        if not millis >= EARLIEST_MILLIS:  # also NaN
            raise ValueError(f"{value} is before year 1")
        return millis
    if isinstance(value, str):
        text = value.strip()
        parsed = datetime.fromisoformat(text)  # ValueError for anything else
        return to_epoch_millis(parsed)
    raise TypeError(type(value).__name__)


class Flattener:
    """Turns records into columns, collecting `wrong_type` violations per row index."""

    def __init__(self, parents: ParentRanks | None = None) -> None:
        self.parents = parents if parents is not None else ParentRanks()

    def flatten(
        self, records: Iterable[Any], known: Mapping[str, int] | None = None
    ) -> tuple[dict[str, list[Any]], dict[int, list[Violation]]]:
        """Columns and type errors of `records`. Parents' ranks come from `known` when given
        (every parent the caller could find, wherever it was seen), else from the records this
        flattener has seen so far, in order."""
        columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        type_errors: dict[int, list[Violation]] = {}
        for index, record in enumerate(records):
            row, errors = self._row(record, known)
            for name in COLUMNS:
                columns[name].append(row.get(name))
            if errors:
                type_errors[index] = errors
        return columns, type_errors

    def _row(
        self, record: Any, known: Mapping[str, int] | None
    ) -> tuple[dict[str, Any], list[Violation]]:
        errors: list[Violation] = []
        rid = record_id_of(record)

        def text(container: Any, key: str, field: str) -> str | None:
            value = container.get(key) if isinstance(container, Mapping) else None
            if value is None or (isinstance(value, str) and is_unicode(value)):
                return value
            expected = "valid Unicode text" if isinstance(value, str) else "a string"
            errors.append(_wrong_type(rid, field, expected, value))
            return None

        def mapping(container: Any, key: str, field: str) -> Mapping[str, Any] | None:
            value = container.get(key) if isinstance(container, Mapping) else None
            if value is None or isinstance(value, Mapping):
                return value
            errors.append(_wrong_type(rid, field, "an object", value))
            return None

        if not isinstance(record, Mapping):
            errors.append(_wrong_type(rid, "(record)", "an object", record))
        prov = mapping(record, "provenance", "provenance")
        gen = mapping(prov, "generator", "provenance.generator")
        row: dict[str, Any] = {
            "record_id": text(record, "record_id", "record_id"),
            "tenant_id": text(record, "tenant_id", "tenant_id"),
            "provenance_present": prov is not None,
            "content_class": text(prov, "content_class", "provenance.content_class"),
            "origin_env": text(prov, "origin_env", "provenance.origin_env"),
            "source_system": text(prov, "source_system", "provenance.source_system"),
            "generator_name": text(gen, "name", "provenance.generator.name"),
            "parameters_sha256": text(
                gen, "parameters_sha256", "provenance.generator.parameters_sha256"
            ),
            "disclosure": text(prov, "disclosure", "provenance.disclosure"),
            "digital_source_type": text(
                prov, "digital_source_type", "provenance.digital_source_type"
            ),
        }
        raw_time = prov.get("generated_at") if prov is not None else None
        if raw_time is not None:
            try:
                row["generated_at"] = to_epoch_millis(raw_time)
            except (TypeError, ValueError, OverflowError):
                errors.append(
                    _wrong_type(
                        rid,
                        "provenance.generated_at",
                        "a timestamp (epoch millis or ISO-8601) from year 1 on",
                        raw_time,
                    )
                )
        rank = CLASS_RANK.get(row["content_class"] or "")
        row["class_rank"] = rank
        parent_ids = prov.get("parent_record_ids") if prov is not None else None
        if parent_ids is not None and not (
            isinstance(parent_ids, list)
            and all(isinstance(p, str) and is_unicode(p) for p in parent_ids)
        ):
            errors.append(
                _wrong_type(rid, "provenance.parent_record_ids", "a list of strings", parent_ids)
            )
            parent_ids = None
        if known is not None:
            if parent_ids:
                ranks = [known[p] for p in parent_ids if p in known]
                row["max_parent_class_rank"] = max(ranks) if ranks else None
            return row, errors
        if parent_ids:
            row["max_parent_class_rank"] = self.parents.max_rank(parent_ids)
        if rid is not None and rank is not None:
            self.parents.remember(rid, rank)
        return row, errors


def is_unicode(text: str) -> bool:
    """False for text that cannot be UTF-8 (lone surrogates, which JSON may carry): no Avro
    string or Kafka message can hold it, and Arrow's string columns refuse it."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def describe(record_id: str | None) -> str:
    return (
        f"Record `{shorten(record_id, 80)}`"
        if record_id is not None
        else ("Record without record_id")
    )


def _wrong_type(record_id: str | None, field: str, expected: str, value: Any) -> Violation:
    return Violation(
        rule="wrong_type",
        column=field,
        message=f"{describe(record_id)}: `{field}` must be {expected}, "
        f"got {type(value).__name__} `{shorten(value)}`.",
    )


# IPTC's digital source type URIs, as messages show them: IPTC's own short form (QCode),
# `digsrctype:trainedAlgorithmicMedia`, so the code is not cut off by `shorten`.
IPTC_DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def as_qcode(value: str) -> str:
    if value.startswith(IPTC_DIGITAL_SOURCE_TYPE):
        return "digsrctype:" + value.removeprefix(IPTC_DIGITAL_SOURCE_TYPE)
    return value


def shorten(value: Any, limit: int = 40) -> str:
    """A value as shown in messages: strings as they are, others as repr, cut at `limit`."""
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"
