"""The guard chain over Arrow micro-batches: decode → validate → enforce → hops.

Each stage takes a `GuardBatch` (`arrow_batch`) and returns it with its verdict columns
(`stopped_at`, `blocked`, `violations`) set for the rows it stopped; rows stopped before are
never looked at again. Whole columns are judged at once (`pyarrow.compute`, the compiled
suites); Python builds a `Violation` only for a row that fails. Bodies are decoded into
columns by the Rust reader (`io.arrow_decode`), each body on its own; fastavro reads only
what it cannot (other framings, a body it refuses), and the hop rows' hashes come from the
native extension too (`lineage.hashes`).

The decisions are those of the per-record stages (`lineage_guard.stages`), verdict for
verdict and message for message, and the hop rows, Merkle leaves and roots are byte-identical
to theirs (`tests/unit/test_guard_chain.py` holds them to it on hostile batches).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lineage_guard.arrow_batch import GuardBatch
from lineage_guard.contract.columns import TYPES
from lineage_guard.contract.policies import Policy, TrainingPolicy, judge
from lineage_guard.contract.records import CLASS_RANK, COLUMNS, provenance_of, record_id_of
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.contract.verdicts import Violation
from lineage_guard.io import arrow_decode
from lineage_guard.io.decode import Decoded, Decoder, decoder_for, known_fingerprints
from lineage_guard.lineage.bounds import (
    ID_LIMIT,
    MESSAGE_LIMIT,
    PIPELINE_LIMIT,
    TEXT_LIMIT,
    TOPIC_LIMIT,
    bounded,
    stored_id,
)
from lineage_guard.lineage.events import Stage
from lineage_guard.lineage.hashes import sha256_hex_each
from lineage_guard.lineage.hops import HopBatch, HopRows, Outcome
from lineage_guard.stages import ClassLookup, ParentIndex, clean, known_ranks, parent_ids
from lineage_guard.stages import index_keys as stages_index_keys

UNDECODABLE = "undecodable"  # message bytes that are not a record of a known schema
MALFORMED = "malformed_record"  # a file's record its reader could not read


def decode(batch: GuardBatch, decoder: Decoder) -> GuardBatch:
    """Message bytes → the contract's columns; a message that does not decode stops here
    (`undecodable`), and so does a file's record its reader could not read
    (`malformed_record`). Rows that already hold a record (read from a file) pass as they are.

    Bodies of a known schema (single-object, or raw with `--schema`) are read by the Rust
    reader into columns (`io.arrow_decode`), grouped by writer schema; a body it cannot read
    exactly, and every other message, is read by `decoder` (fastavro) into a record."""
    n = len(batch)
    records = list(batch.records) if batch.records is not None else [None] * n
    values = batch.column("value")
    error_present = np.asarray(pc.is_valid(batch.column("error")))
    not_stopped = (
        np.asarray(pc.is_null(batch.column("stopped_at")))
        if batch.has("stopped_at")
        else np.ones(n, dtype=bool)
    )
    no_record = (
        np.array([r is None for r in records], dtype=bool)
        if batch.records is not None
        else np.ones(n, dtype=bool)
    )
    todo = no_record & not_stopped & ~error_present
    schemas = np.array(
        batch.column("schema").to_pylist() if batch.has("schema") else [None] * n, dtype=object
    )
    read = np.zeros(n, dtype=bool)
    if todo.any() and arrow_decode.available():
        columns, read = _read_columns(values, todo, decoder, schemas)
        batch = batch.with_columns(**columns)
    found: dict[int, tuple[Violation, ...]] = {}
    offsets: list[Any] | None = None
    for i in np.flatnonzero(no_record & not_stopped & ~read).tolist():
        if offsets is None:
            offsets = batch.column("offset").to_pylist()
        error = batch.column("error")[i].as_py()
        if error is not None:  # the file reader's: the same words as `validate` says them
            message = f"Record at index {offsets[i]} of `{batch.topic}`: {error}."
            found[i] = (Violation(rule=MALFORMED, column=None, message=message),)
            continue
        outcome = decoder.decode(values[i].as_py())
        if isinstance(outcome, Decoded):
            records[i] = outcome.record
            schemas[i] = outcome.schema
            continue
        message = f"Message `{batch.topic}`[{batch.partition}]@{offsets[i]}: {outcome.reason}."
        found[i] = (Violation(rule=UNDECODABLE, column=None, message=message),)
    batch = batch.with_records(records).with_columns(
        schema=pa.array(schemas, pa.string()), read=pa.array(read, pa.bool_())
    )
    return stop(batch, Stage.DECODE, found)


def with_records(batch: GuardBatch) -> GuardBatch:
    """`batch` with the record of every row the Rust reader read into columns, read by
    fastavro with the writer schema the reader used (the `schema` column): for writers and
    transforms that need the records themselves."""
    if not batch.has("read"):
        return batch
    rows = pc.indices_nonzero(batch.column("read")).to_pylist()
    if not rows:
        return batch
    records = list(batch.records) if batch.records is not None else [None] * len(batch)
    values = batch.column("value")
    schemas = batch.column("schema")
    for i in rows:
        if records[i] is None:
            value = values[i].as_py()
            outcome = _reader_of(value, schemas[i].as_py()).decode(value)
            assert isinstance(outcome, Decoded), "a body the Rust reader read must decode"
            records[i] = outcome.record
    return batch.with_records(records)


def _reader_of(value: bytes, schema: str) -> Decoder:
    """The decoder that reads `value` as the Rust reader did: single-object when it says so
    (and its fingerprint is `schema`'s), else raw with `schema`."""
    if value[:2] == b"\xc3\x01" and known_fingerprints().get(value[2:10]) == schema:
        return _decoder(None)
    return _decoder(schema)


@functools.cache
def _decoder(raw_schema: str | None) -> Decoder:
    return decoder_for(raw_schema, None)


def refuse(batch: GuardBatch, found: Mapping[int, Violation]) -> GuardBatch:
    """`batch` with each row of `found` stopped at the write step (unless a stage stopped it
    before), its violation added to the row's: a destination cannot take it."""
    if not found:
        return batch
    stopped = _stopped(batch)
    violations = dict(batch.violations)
    for i, violation in found.items():
        stopped[i] = stopped[i] or str(Stage.WRITE)
        violations[i] = (*violations.get(i, ()), violation)
    return batch.with_columns(
        stopped_at=pa.array(stopped, pa.string()),
        blocked=pa.array(batch.blocked(), pa.bool_()),
    ).with_violations(violations)


def _read_columns(
    values: pa.Array, todo: np.ndarray, decoder: Decoder, schemas: np.ndarray
) -> tuple[dict[str, pa.Array], np.ndarray]:
    """The contract's columns of the `todo` rows the Rust reader reads (null elsewhere), and
    which rows it read. Framing as `Decoder.decode` detects it: Confluent first, then
    single-object, then raw bodies when the decoder has a `--schema`."""
    n = len(values)
    lengths = pc.fill_null(pc.binary_length(values), 0).to_numpy(zero_copy_only=False)
    first = pc.binary_slice(values, 0, 1)
    confluent = np.asarray(pc.fill_null(pc.equal(first, b"\x00"), False)) & (lengths >= 5)
    soe = (
        np.asarray(pc.fill_null(pc.equal(pc.binary_slice(values, 0, 2), b"\xc3\x01"), False))
        & (lengths >= 10)
        & ~confluent
    )
    readers = np.full(n, arrow_decode.NOT_READ, dtype=np.uint8)
    skips = np.zeros(n, dtype=np.uint8)
    names: list[str] = []
    candidates = todo & soe
    if candidates.any():
        prints = pc.binary_slice(values, 2, 10)
        for fingerprint in pc.unique(pc.filter(prints, pa.array(candidates))).to_pylist():
            name = known_fingerprints().get(fingerprint)
            if name is not None:
                rows = candidates & np.asarray(pc.fill_null(pc.equal(prints, fingerprint), False))
                readers[rows], skips[rows] = len(names), 10
                names.append(name)
    raw_name = decoder.raw_schema_name
    if raw_name is not None:
        rows = todo & ~confluent & ~soe & (lengths > 0)
        if rows.any():
            readers[rows] = len(names)
            names.append(raw_name)
    got = arrow_decode.read_bodies(values, names, readers, skips)
    read = got.status == arrow_decode.READ
    if read.any():
        schemas[read] = np.array(names, dtype=object)[readers[read]]
    return got.columns, read


def validate(
    batch: GuardBatch,
    validator: SuiteValidator,
    index: ParentIndex | None = None,
    lookup: ClassLookup | None = None,
) -> GuardBatch:
    """The suites over the rows not stopped yet; parents as in `stages.parent_ranks`. Rows
    the Rust reader read are judged on their columns as they are; rows that hold a record
    are flattened first (`contract.columns`), then both are judged as one batch."""
    pending = _pending(batch)
    if not pending:
        return batch
    at = np.array(pending, dtype=np.int64)
    on_columns = _read_mask(batch)[at]
    by_columns = at[on_columns].tolist()
    by_record = at[~on_columns].tolist()
    records = batch.records if batch.records is not None else (None,) * len(batch)
    dicts = [records[i] for i in by_record]

    # Parents: wanted by any pending row; own classes from the pending rows.
    wanted = parent_ids(dicts)
    taken: dict[str, pa.Array] = {}
    parent_lists: list[Any] = []
    if by_columns:
        rows = pa.array(by_columns, pa.int64())
        taken = {name: batch.column(name).take(rows) for name in _CONTRACT_READ}
        listed = taken.pop("parent_record_ids")
        with_parents = pc.indices_nonzero(pc.fill_null(pc.list_value_length(listed), 0))
        if len(with_parents):
            parent_lists = listed.take(with_parents).to_pylist()
            for ids in parent_lists:
                wanted.update(ids)
    own: list[tuple[str | None, Any]] = []
    if wanted:
        own = [(record_id_of(r), provenance_of(r).get("content_class")) for r in dicts]
        if by_columns:  # only the rows that are someone's parent
            mine = pc.indices_nonzero(
                pc.is_in(taken["record_id"], value_set=pa.array(list(wanted), pa.string()))
            )
            own.extend(
                zip(
                    taken["record_id"].take(mine).to_pylist(),
                    taken["content_class"].take(mine).to_pylist(),
                    strict=True,
                )
            )
    known = known_ranks(wanted, own, index, lookup)

    parts: list[dict[str, pa.Array]] = []
    type_errors: dict[int, list[Violation]] = {}
    if by_columns:
        taken["class_rank"] = pc.index_in(taken["content_class"], _CLASSES).cast(pa.int8())
        ranks = np.full(len(by_columns), -1, dtype=np.int8)  # -1: none known
        for row, ids in zip(with_parents.to_pylist(), parent_lists, strict=True):
            rank = _max_rank(ids, known)
            if rank is not None:
                ranks[row] = rank
        taken["max_parent_class_rank"] = pa.array(ranks, mask=ranks < 0)
        parts.append(taken)
    if by_record:
        flat, errors = validator.flatten(dicts, known)
        parts.append(flat)
        type_errors = {len(by_columns) + i: v for i, v in errors.items()}
    columns = {
        name: pa.concat_arrays([part[name].cast(TYPES[name]) for part in parts]) for name in COLUMNS
    }
    failures = validator.failures_of_columns(columns, type_errors)
    order = by_columns + by_record
    return stop(batch, Stage.VALIDATE, {order[row]: v for row, v in failures.items()})


_CLASSES = pa.array(["HUMAN", "AI_ASSISTED", "SYNTHETIC"])  # their index is their rank
_CONTRACT_READ = (*(name for name in COLUMNS if "rank" not in name), "parent_record_ids")


def _max_rank(ids: list[str] | None, known: Mapping[str, int]) -> int | None:
    if not ids:
        return None
    found = [known[p] for p in ids if p in known]
    return max(found) if found else None


def _read_mask(batch: GuardBatch) -> np.ndarray:
    """Which rows the Rust reader read into the contract's columns."""
    if batch.has("read"):
        return np.asarray(batch.column("read"), dtype=bool)
    return np.zeros(len(batch), dtype=bool)


def enforce(batch: GuardBatch, policies: Sequence[Policy]) -> GuardBatch:
    """The sink policies over the rows not stopped yet. Production and tenant policies are
    column comparisons; a row they flag is judged by the policies themselves, which word its
    objections. Training policies keep their export's kind across batches, so they judge the
    remaining rows one by one (a training export is no hot path)."""
    pending = _pending(batch)
    if not pending or not policies:
        return batch
    if any(isinstance(p, TrainingPolicy) for p in policies):
        flagged = pending  # stateful: every row, in order
    else:
        flagged = _flagged(batch, pending, policies)
    found = {}
    for i in flagged:
        objections = judge(policies, _judged(batch, i))
        if objections:
            found[i] = objections
    return stop(batch, Stage.ENFORCE, found, blocked=True)


def _judged(batch: GuardBatch, row: int) -> Any:
    """What a policy reads of a row: its record, or for a row read into columns the fields
    policies read, with the same values."""
    if batch.records is not None and batch.records[row] is not None:
        return batch.records[row]
    return {
        "record_id": batch.column("record_id")[row].as_py(),
        "tenant_id": batch.column("tenant_id")[row].as_py(),
        "provenance": {
            "origin_env": batch.column("origin_env")[row].as_py(),
            "content_class": batch.column("content_class")[row].as_py(),
        },
    }


def _flagged(batch: GuardBatch, pending: list[int], policies: Sequence[Policy]) -> list[int]:
    """The pending rows some production or tenant policy may refuse. A row not flagged
    passes every one of them for certain: its value is exactly the text the policy wants."""
    at = np.array(pending, dtype=np.int64)
    on_columns = _read_mask(batch)[at]
    by_record = np.flatnonzero(~on_columns)  # positions in `pending`
    records = batch.records if batch.records is not None else (None,) * len(batch)
    dicts = [records[pending[k]] for k in by_record.tolist()]
    dicts = [r if type(r) is dict else {} for r in dicts]
    provenances = [p if type(p) is dict else {} for p in _field(dicts, "provenance")]
    rows = pa.array(at)
    refused = pa.repeat(False, len(pending))
    for policy in policies:
        if policy.name == "production":
            name, wanted, given = "origin_env", "PRODUCTION", _field(provenances, "origin_env")
        else:
            name, wanted, given = "tenant_id", policy.tenant_id, _field(dicts, "tenant_id")  # type: ignore[union-attr]
        values = batch.column(name).take(rows) if on_columns.any() else None
        if len(by_record):
            full = np.empty(len(pending), dtype=object)
            if values is not None:
                full[:] = values.to_pylist()
            full[by_record] = _strings(given).to_pylist()
            values = pa.array(full.tolist(), pa.string())
        refused = pc.or_(refused, pc.fill_null(pc.not_equal(values, wanted), True))
    return [pending[row] for row in pc.indices_nonzero(refused).to_pylist()]


def stop(
    batch: GuardBatch,
    stage: Stage,
    found: Mapping[int, tuple[Violation, ...]],
    *,
    blocked: bool = False,
) -> GuardBatch:
    """`batch` with the rows of `found` stopped at `stage`, with their violations."""
    n = len(batch)
    if batch.has("stopped_at") and not found:
        return batch
    stopped = _stopped(batch)
    is_blocked = batch.column("blocked").to_pylist() if batch.has("blocked") else [False] * n
    violations = dict(batch.violations)
    for i, row in found.items():
        stopped[i] = str(stage)
        is_blocked[i] = blocked
        violations[i] = row
    return batch.with_columns(
        stopped_at=pa.array(stopped, pa.string()),
        blocked=pa.array(is_blocked, pa.bool_()),
    ).with_violations(violations)


def _stopped(batch: GuardBatch) -> list[str | None]:
    if batch.has("stopped_at"):
        stopped: list[str | None] = batch.column("stopped_at").to_pylist()
        return stopped
    return [None] * len(batch)


def _pending(batch: GuardBatch) -> list[int]:
    if not batch.has("stopped_at"):
        return list(range(len(batch)))
    return pc.indices_nonzero(batch.allowed_mask()).to_pylist()


def index_keys(batch: GuardBatch) -> tuple[bytes, bytes]:
    """The batch's part of the run's `ParentIndex` (`stages.index_keys`): the keys of its
    SYNTHETIC and AI_ASSISTED records, from the decoded columns (and from the records of
    rows read by fastavro). Run it after `decode`: only records that decode are indexed (the
    per-record head read, `Decoder.head`, also indexes a message whose tail is damaged)."""
    pairs: list[tuple[str, int]] = []
    if batch.has("read") and batch.has("content_class"):
        generated = pc.and_(
            batch.column("read"),
            pc.is_in(batch.column("content_class"), value_set=_CLASSES.slice(1)),
        )
        rows = pc.indices_nonzero(generated)
        ids = batch.column("record_id").take(rows).to_pylist()
        ranks = pc.index_in(batch.column("content_class").take(rows), _CLASSES).to_pylist()
        pairs.extend((i, r) for i, r in zip(ids, ranks, strict=True) if i is not None)
    if batch.records is not None:
        for record in batch.records:
            if record is None:
                continue
            record_id = record_id_of(record)
            content_class = provenance_of(record).get("content_class")
            rank = CLASS_RANK.get(content_class) if type(content_class) is str else None
            if record_id is not None and rank:
                pairs.append((record_id, rank))
    return stages_index_keys(pairs)


# -- lineage ---------------------------------------------------------------------------------


def hop_rows(batch: GuardBatch) -> HopRows:
    """One hop row per record: where it came from, what the chain decided, its provenance,
    and the SHA-256 of its bytes as received (`stages.received_digest`). Values come from the
    columns for rows the Rust reader read, from the record for rows that hold one."""
    n = len(batch)
    stopped = _stopped(batch)
    blocked = batch.column("blocked").to_pylist() if batch.has("blocked") else [False] * n
    reasons: list[tuple[tuple[str, str], ...]] = [()] * n
    for i, row in batch.violations.items():
        reasons[i] = tuple(
            (bounded(clean(v.rule), TEXT_LIMIT), bounded(clean(v.message), MESSAGE_LIMIT))
            for v in row
        )
    delivered, refused, quarantined = (
        Outcome.DELIVERED.value,
        Outcome.BLOCKED.value,
        Outcome.QUARANTINED.value,
    )
    outcomes = [
        delivered if s is None else (refused if b else quarantined)
        for s, b in zip(stopped, blocked, strict=True)
    ]
    columns: dict[str, list[Any]] = {
        "source_offset": batch.column("offset").to_pylist(),
        "outcome": outcomes,
        "stopped_at": stopped,
        "reasons": reasons,
        "digest": digests(batch),
    }
    if batch.has("read") and pc.any(batch.column("read")).as_py():
        for name, column in _HOP_COLUMN_OF.items():
            columns[name] = _bounded(
                _cleaned(batch.column(column)), ID_LIMIT if name == "record_id" else TEXT_LIMIT
            )
        parents = _cleaned(pc.list_flatten(batch.column("parent_record_ids")))
        lists = pa.ListArray.from_arrays(
            batch.column("parent_record_ids").offsets, parents
        ).to_pylist()
        if len(parents) and pc.max(pc.utf8_length(parents)).as_py() > ID_LIMIT:
            columns["parent_record_ids"] = [
                tuple(stored_id(p) for p in ids) if ids else () for ids in lists
            ]
        else:  # no id to bound (`stored_id` is the identity on them)
            columns["parent_record_ids"] = [tuple(ids) if ids else () for ids in lists]
        rows = [i for i, r in enumerate(batch.records or ()) if r is not None]
    else:
        columns.update((name, [None] * n) for name in _HOP_COLUMN_OF)
        columns["parent_record_ids"] = [()] * n
        rows = list(range(n))
    if rows:
        records = batch.records if batch.records is not None else (None,) * n
        recs: list[dict[str, Any]] = [
            r if type(r) is dict else {} for r in (records[i] for i in rows)
        ]
        provs = [p if type(p) is dict else {} for p in _field(recs, "provenance")]
        gens = _field(provs, "generator")
        from_records: dict[str, list[Any]] = {
            "record_id": _texts(_field(recs, "record_id"), ID_LIMIT),
            "content_class": _texts(_field(provs, "content_class")),
            "origin_env": _texts(_field(provs, "origin_env")),
            "tenant_id": _texts(_field(recs, "tenant_id")),
            "source_system": _texts(_field(provs, "source_system")),
            "generator": _texts([g.get("name") if type(g) is dict else None for g in gens]),
            "parent_record_ids": [
                tuple(stored_id(clean(p)) for p in ps if type(p) is str)
                if type(ps) is list and ps
                else ()
                for ps in _field(provs, "parent_record_ids")
            ],
        }
        for name, values in from_records.items():
            target = columns[name]
            for i, value in zip(rows, values, strict=True):
                target[i] = value
    return HopRows(columns)


# hop field → the contract column it is read from (rows read by the Rust reader)
_HOP_COLUMN_OF = {
    "record_id": "record_id",
    "content_class": "content_class",
    "origin_env": "origin_env",
    "tenant_id": "tenant_id",
    "source_system": "source_system",
    "generator": "generator_name",
}


def _cleaned(values: pa.Array) -> pa.Array:
    """`stages.clean` over a string column (valid UTF-8 already: only NUL is replaced)."""
    return pc.replace_substring(values, "\x00", "\ufffd")


def hop_batch(
    batch: GuardBatch,
    *,
    pipeline: str,
    run_id: str,
    allowed_to: str,
    quarantined_to: str,
    at: datetime | None = None,
    rows: HopRows | None = None,
) -> HopBatch:
    """The batch's hops with their header, as the stores take them (`rows`: the batch's
    `hop_rows`, when already built)."""
    return HopBatch(
        pipeline=bounded(clean(pipeline), PIPELINE_LIMIT),
        run_id=run_id,
        at=at or datetime.now(UTC),
        source_topic=bounded(clean(batch.topic), TOPIC_LIMIT),
        source_partition=batch.partition,
        allowed_to=allowed_to,
        quarantined_to=quarantined_to,
        rows=rows if rows is not None else hop_rows(batch),
    )


def digests(batch: GuardBatch) -> list[str]:
    """SHA-256 (hex) of each record's bytes as received: the message value; for a record
    read from a file (no bytes), its canonical JSON (sorted keys, compact, UTF-8)."""
    values = batch.column("value")
    out = sha256_hex_each(values)  # a null value: the SHA-256 of no bytes
    if batch.records is not None and values.null_count:
        for i in pc.indices_nonzero(pc.is_null(values)).to_pylist():
            record = batch.records[i]
            if record is not None:
                canonical = _canonical_record(record)
                out[i] = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    return out


def _canonical_record(record: Any) -> str:
    import json

    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )


def _field(objects: Sequence[Any], key: str) -> list[Any]:
    """`key` of every dict (None where missing); C-speed when every dict has it."""
    try:
        return list(map(itemgetter(key), objects))
    except KeyError:
        return [o.get(key) for o in objects]


def _texts(values: list[Any], limit: int = TEXT_LIMIT) -> list[str | None]:
    """Text values as a hop keeps them (`stages._text`): cleaned and bounded."""
    return [bounded(clean(v), limit) if type(v) is str else None for v in values]


def _bounded(values: pa.Array, limit: int) -> list[str | None]:
    """A string column's values bounded (`lineage.bounds`): Python only for the long ones."""
    texts: list[str | None] = values.to_pylist()
    for i in pc.indices_nonzero(
        pc.fill_null(pc.greater(pc.utf8_length(values), limit), False)
    ).to_pylist():
        texts[i] = bounded(texts[i], limit)
    return texts


def _strings(values: list[Any]) -> pa.Array:
    """Text values as a string column; anything else (and text Arrow refuses) as null."""
    texts = [v if type(v) is str else None for v in values]
    try:
        return pa.array(texts, pa.string())
    except (pa.ArrowException, UnicodeError):
        return pa.array([t if t is not None and t.isascii() else None for t in texts], pa.string())
