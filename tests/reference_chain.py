"""The per-record guard chain, kept as the slow reference the columnar chain
(`lineage_guard.guard_chain`) is proven against: the differential tests and the benchmarks'
per-record figures run it on the same records. The product never calls it.

It works on the per-record view (`items.Batch` of `Item`s, `GuardBatch.items()`), one record
at a time, with the same suites, policies and store lookups.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from lineage_guard.contract.policies import Policy, judge
from lineage_guard.contract.records import CLASS_RANK, provenance_of, record_id_of
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.contract.verdicts import Violation
from lineage_guard.io.decode import Decoded, Decoder
from lineage_guard.items import Batch, Item
from lineage_guard.lineage.bounds import (
    ID_LIMIT,
    MESSAGE_LIMIT,
    PIPELINE_LIMIT,
    TEXT_LIMIT,
    TOPIC_LIMIT,
    bounded,
    stored_id,
)
from lineage_guard.lineage.events import Reason, Stage
from lineage_guard.lineage.hops import Hop, HopBatch, Outcome
from lineage_guard.stages import ClassLookup, ParentIndex, clean, parent_ranks


def decode(batch: Batch, decoder: Decoder) -> Batch:
    items = []
    for item in batch.items:
        if item.record is not None or item.stopped_at is not None:
            items.append(item)  # already decoded (file input) or already stopped
            continue
        if item.error is not None:
            reason = item.error
        else:
            outcome = decoder.decode(item.source.value)
            if isinstance(outcome, Decoded):  # nothing else is set on an undecoded item
                items.append(Item(source=item.source, record=outcome.record, schema=outcome.schema))
                continue
            reason = outcome.reason
        s = item.source
        violation = Violation(
            rule="undecodable",
            column=None,
            message=f"Message `{s.topic}`[{s.partition}]@{s.offset}: {reason}.",
        )
        items.append(dataclasses.replace(item, stopped_at=Stage.DECODE, violations=(violation,)))
    return dataclasses.replace(batch, items=tuple(items))


def class_index(batch: Batch, decoder: Decoder | None = None) -> Iterator[tuple[str, int]]:
    """(record id, class rank) of the batch's generated records (AI_ASSISTED, SYNTHETIC): the
    only ones that can constrain a child. Whatever a later stage decides about them.

    Records decoded already (or read from files) are read as they are; with `decoder`, a
    message not decoded yet is read only as far as its id and class (`Decoder.head`)."""
    for item in batch.items:
        record = item.record
        if record is not None:
            record_id = record_id_of(record)
            content_class = provenance_of(record).get("content_class")
        elif decoder is not None and item.error is None:
            head = decoder.head(item.source.value)
            if head is None:
                continue
            record_id, content_class = head
        else:
            continue
        rank = CLASS_RANK.get(content_class) if type(content_class) is str else None
        if record_id is not None and rank:
            yield record_id, rank


def validate(
    batch: Batch,
    validator: SuiteValidator,
    index: ParentIndex | None = None,
    lookup: ClassLookup | None = None,
) -> Batch:
    """Validates the batch's records not stopped yet; parents as in `parent_ranks`."""
    pending = [i for i, item in enumerate(batch.items) if item.stopped_at is None]
    records = [batch.items[i].record for i in pending]
    verdicts = validator.validate(records, parent_ranks(records, index, lookup))
    items = list(batch.items)
    for i, verdict in zip(pending, verdicts, strict=True):
        if not verdict.passed:
            items[i] = dataclasses.replace(
                items[i], stopped_at=Stage.VALIDATE, violations=verdict.violations
            )
    return dataclasses.replace(batch, items=tuple(items))


def enforce(batch: Batch, policies: Sequence[Policy]) -> Batch:
    items = []
    for item in batch.items:
        if item.stopped_at is None and item.record is not None:
            objections = judge(policies, item.record)
            if objections:
                item = dataclasses.replace(
                    item, stopped_at=Stage.ENFORCE, blocked=True, violations=objections
                )
        items.append(item)
    return dataclasses.replace(batch, items=tuple(items))


def lineage_hops(
    batch: Batch,
    *,
    pipeline: str,
    run_id: str,
    allowed_to: str,
    quarantined_to: str,
    at: datetime | None = None,
) -> HopBatch:
    """One hop per record: where it came from, what the guard decided, and its provenance."""
    hops = []
    for item in batch.items:
        if item.allowed:
            outcome = Outcome.DELIVERED
        else:
            outcome = Outcome.BLOCKED if item.blocked else Outcome.QUARANTINED
        # Plain dict checks, not `Mapping` ones: this runs once per record on the hot path.
        record = item.record if type(item.record) is dict else {}
        provenance = record.get("provenance")
        provenance = provenance if type(provenance) is dict else {}
        generator = provenance.get("generator")
        parents = provenance.get("parent_record_ids")
        hops.append(
            Hop(
                record_id=_text(record.get("record_id"), ID_LIMIT),
                source_offset=item.source.offset,
                outcome=outcome,
                stopped_at=Stage(item.stopped_at) if item.stopped_at is not None else None,
                reasons=tuple(
                    Reason(
                        rule=bounded(clean(v.rule), TEXT_LIMIT),
                        message=bounded(clean(v.message), MESSAGE_LIMIT),
                    )
                    for v in item.violations
                ),
                content_class=_text(provenance.get("content_class")),
                origin_env=_text(provenance.get("origin_env")),
                tenant_id=_text(record.get("tenant_id")),
                source_system=_text(provenance.get("source_system")),
                generator=_text(generator.get("name")) if type(generator) is dict else None,
                parent_record_ids=tuple(stored_id(clean(p)) for p in parents if type(p) is str)
                if type(parents) is list and parents
                else (),
                digest=received_digest(item),
            )
        )
    return HopBatch(
        pipeline=bounded(clean(pipeline), PIPELINE_LIMIT),
        run_id=run_id,
        at=at or datetime.now(UTC),
        source_topic=bounded(clean(batch.topic), TOPIC_LIMIT),
        source_partition=batch.partition,
        allowed_to=allowed_to,
        quarantined_to=quarantined_to,
        hops=tuple(hops),
    )


def received_digest(item: Item) -> str:
    """SHA-256 of the record's bytes as received: the Kafka message value; for a record read
    from a file (no message bytes), its canonical JSON (sorted keys, compact, UTF-8)."""
    if item.source.value is not None or item.record is None:
        return hashlib.sha256(item.source.value or b"").hexdigest()
    canonical = json.dumps(
        item.record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _text(value: Any, limit: int = TEXT_LIMIT) -> str | None:
    """A record's text as a hop keeps it: cleaned and bounded (`lineage.bounds`)."""
    return bounded(clean(value), limit) if type(value) is str else None
