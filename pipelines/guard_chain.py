"""The guard chain over Arrow micro-batches: decode → validate → enforce → hops.

Each stage takes a `GuardBatch` (`arrow_batch`) and returns it with its verdict columns
(`stopped_at`, `blocked`, `violations`) set for the rows it stopped; rows stopped before are
never looked at again. Whole columns are judged at once (`pyarrow.compute`, the compiled
suites); Python builds a `Violation` only for a row that fails. Decoding is per message
(fastavro) until an Arrow-native Avro reader replaces it: the one per-record loop left.

The decisions are those of the per-record stages (`lineage_guard.stages`), verdict for
verdict and message for message, and the hop rows, Merkle leaves and roots are byte-identical
to theirs (`tests/unit/test_guard_chain.py` holds them to it on hostile batches).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from lineage_guard.arrow_batch import GuardBatch
from lineage_guard.contract.policies import Policy, TrainingPolicy, judge
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.contract.verdicts import Violation
from lineage_guard.io.decode import Decoded, Decoder
from lineage_guard.lineage.events import Reason, Stage
from lineage_guard.lineage.hops import Hop, HopBatch, Outcome, compact_json, merkle_root
from lineage_guard.stages import ClassLookup, ParentIndex, clean, parent_ranks


def decode(batch: GuardBatch, decoder: Decoder) -> GuardBatch:
    """Message bytes → records; a message that does not decode stops here (`undecodable`).
    Rows that already hold a record (read from a file) pass as they are."""
    n = len(batch)
    records = list(batch.records) if batch.records is not None else [None] * n
    stopped = _stopped(batch)
    errors = batch.column("error").to_pylist()
    values = batch.column("value").to_pylist()
    schemas = batch.column("schema").to_pylist() if batch.has("schema") else [None] * n
    found: dict[int, tuple[Violation, ...]] = {}
    offsets: list[Any] | None = None
    for i in range(n):
        if records[i] is not None or stopped[i] is not None:
            continue
        error = errors[i]
        if error is None:
            outcome = decoder.decode(values[i])
            if isinstance(outcome, Decoded):
                records[i] = outcome.record
                schemas[i] = outcome.schema
                continue
            error = outcome.reason
        if offsets is None:
            offsets = batch.column("offset").to_pylist()
        message = f"Message `{batch.topic}`[{batch.partition}]@{offsets[i]}: {error}."
        found[i] = (Violation(rule="undecodable", column=None, message=message),)
    batch = batch.with_records(records).with_columns(schema=pa.array(schemas, pa.string()))
    return stop(batch, Stage.DECODE, found)


def validate(
    batch: GuardBatch,
    validator: SuiteValidator,
    index: ParentIndex | None = None,
    lookup: ClassLookup | None = None,
) -> GuardBatch:
    """The suites over the rows not stopped yet; parents as in `stages.parent_ranks`."""
    pending = _pending(batch)
    if not pending:
        return batch
    assert batch.records is not None, "validate runs on decoded batches"
    records = [batch.records[i] for i in pending]
    failures = validator.failures(records, parent_ranks(records, index, lookup))
    return stop(batch, Stage.VALIDATE, {pending[row]: v for row, v in failures.items()})


def enforce(batch: GuardBatch, policies: Sequence[Policy]) -> GuardBatch:
    """The sink policies over the rows not stopped yet. Production and tenant policies are
    column comparisons; a row they flag is judged by the policies themselves, which word its
    objections. Training policies keep their export's kind across batches, so they judge the
    remaining rows one by one (a training export is no hot path)."""
    pending = _pending(batch)
    if not pending or not policies:
        return batch
    assert batch.records is not None, "enforce runs on decoded batches"
    if any(isinstance(p, TrainingPolicy) for p in policies):
        flagged = pending  # stateful: every row, in order
    else:
        flagged = _flagged(batch, pending, policies)
    found = {}
    for i in flagged:
        objections = judge(policies, batch.records[i])
        if objections:
            found[i] = objections
    return stop(batch, Stage.ENFORCE, found, blocked=True)


def _flagged(batch: GuardBatch, pending: list[int], policies: Sequence[Policy]) -> list[int]:
    """The pending rows some production or tenant policy may refuse. A row not flagged
    passes every one of them for certain: its value is exactly the text the policy wants."""
    assert batch.records is not None
    records = [batch.records[i] for i in pending]
    provenances = [p if type(p) is dict else {} for p in _field(records, "provenance")]
    refused = pa.repeat(False, len(pending))
    for policy in policies:
        if policy.name == "production":
            column = _strings(_field(provenances, "origin_env"))
            wanted = "PRODUCTION"
        else:
            column = _strings(_field(records, "tenant_id"))
            wanted = policy.tenant_id  # type: ignore[union-attr]
        refused = pc.or_(refused, pc.fill_null(pc.not_equal(column, wanted), True))
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


# -- lineage ---------------------------------------------------------------------------------


class HopRows:
    """A batch's hop rows as columns (Python lists, one entry per record): what the store
    writes and the Merkle leaves hash, without a `Hop` object per record."""

    FIELDS = (
        "record_id", "source_offset", "outcome", "stopped_at", "reasons", "content_class",
        "origin_env", "tenant_id", "source_system", "generator", "parent_record_ids", "digest",
    )  # fmt: skip

    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["digest"])

    def rows(self) -> list[tuple[Any, ...]]:
        """One tuple per hop, in `FIELDS` order (reasons as (rule, message) pairs)."""
        return list(zip(*(self.columns[name] for name in self.FIELDS), strict=True))

    def leaves(self) -> list[bytes]:
        """`Hop.canonical()` of every row: the compact JSON array the Merkle leaves hash."""
        leaves = []
        for row in self.rows():
            values = list(row)
            values[4] = [list(reason) for reason in row[4]]
            values[10] = list(row[10])
            try:
                leaves.append(orjson.dumps(values))
            except (orjson.JSONEncodeError, TypeError):
                leaves.append(compact_json(values))  # as `compact_json` decides
        return leaves

    def root(self) -> str:
        return merkle_root(self.leaves())

    def hops(self) -> tuple[Hop, ...]:
        """The same rows as `Hop` values (the stores' interface)."""
        return tuple(
            Hop(
                record_id=rid,
                source_offset=offset,
                outcome=Outcome(outcome),
                stopped_at=Stage(stopped) if stopped is not None else None,
                reasons=tuple(Reason(rule=rule, message=message) for rule, message in reasons),
                content_class=content_class,
                origin_env=origin_env,
                tenant_id=tenant_id,
                source_system=source_system,
                generator=generator,
                parent_record_ids=parents,
                digest=digest,
            )
            for (
                rid, offset, outcome, stopped, reasons, content_class, origin_env, tenant_id,
                source_system, generator, parents, digest,
            ) in self.rows()
        )  # fmt: skip


def hop_rows(batch: GuardBatch) -> HopRows:
    """One hop row per record: where it came from, what the chain decided, its provenance,
    and the SHA-256 of its bytes as received (`stages.received_digest`)."""
    n = len(batch)
    records = batch.records if batch.records is not None else (None,) * n
    recs = [r if type(r) is dict else {} for r in records]
    provs = [p if type(p) is dict else {} for p in _field(recs, "provenance")]
    gens = _field(provs, "generator")
    stopped = _stopped(batch)
    blocked = batch.column("blocked").to_pylist() if batch.has("blocked") else [False] * n
    reasons: list[tuple[tuple[str, str], ...]] = [()] * n
    for i, row in batch.violations.items():
        reasons[i] = tuple((v.rule, clean(v.message)) for v in row)
    outcomes = [
        Outcome.DELIVERED.value
        if s is None
        else (Outcome.BLOCKED.value if b else Outcome.QUARANTINED.value)
        for s, b in zip(stopped, blocked, strict=True)
    ]
    parents = [
        tuple(clean(p) for p in ps if type(p) is str) if type(ps) is list and ps else ()
        for ps in _field(provs, "parent_record_ids")
    ]
    return HopRows(
        {
            "record_id": _texts(_field(recs, "record_id")),
            "source_offset": batch.column("offset").to_pylist(),
            "outcome": outcomes,
            "stopped_at": stopped,
            "reasons": reasons,
            "content_class": _texts(_field(provs, "content_class")),
            "origin_env": _texts(_field(provs, "origin_env")),
            "tenant_id": _texts(_field(recs, "tenant_id")),
            "source_system": _texts(_field(provs, "source_system")),
            "generator": _texts([g.get("name") if type(g) is dict else None for g in gens]),
            "parent_record_ids": parents,
            "digest": digests(batch),
        }
    )


def hop_batch(
    batch: GuardBatch,
    *,
    pipeline: str,
    run_id: str,
    allowed_to: str,
    quarantined_to: str,
    at: datetime | None = None,
) -> HopBatch:
    """The batch's hops with their header, as the stores take them."""
    return HopBatch(
        pipeline=pipeline,
        run_id=run_id,
        at=at or datetime.now(UTC),
        source_topic=clean(batch.topic),
        source_partition=batch.partition,
        allowed_to=allowed_to,
        quarantined_to=quarantined_to,
        hops=hop_rows(batch).hops(),
    )


def digests(batch: GuardBatch) -> list[str]:
    """SHA-256 (hex) of each record's bytes as received: the message value; for a record
    read from a file (no bytes), its canonical JSON (sorted keys, compact, UTF-8)."""
    values = batch.column("value").to_pylist()
    records = batch.records if batch.records is not None else (None,) * len(values)
    sha256 = hashlib.sha256
    out = []
    for value, record in zip(values, records, strict=True):
        if value is not None or record is None:
            out.append(sha256(value or b"").hexdigest())
        else:
            canonical = _canonical_record(record)
            out.append(sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest())
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


def _texts(values: list[Any]) -> list[str | None]:
    return [clean(v) if type(v) is str else None for v in values]


def _strings(values: list[Any]) -> pa.Array:
    """Text values as a string column; anything else (and text Arrow refuses) as null."""
    texts = [v if type(v) is str else None for v in values]
    try:
        return pa.array(texts, pa.string())
    except (pa.ArrowException, UnicodeError):
        return pa.array([t if t is not None and t.isascii() else None for t in texts], pa.string())
