"""The guard's stages as plain code: decode, validate, enforce, and the lineage they leave.

The Beam transforms in `pipelines/guard.py` call these; so do the benchmark's `core` path and
the tests, so there is one implementation of what each stage decides.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from lineage_guard.contract.policies import Policy, judge
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.contract.verdicts import Violation
from lineage_guard.io.decode import Decoded, Decoder
from lineage_guard.items import Batch, Item
from lineage_guard.lineage.events import Reason, Stage
from lineage_guard.lineage.hops import Hop, HopBatch, Outcome


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
            if isinstance(outcome, Decoded):
                items.append(
                    dataclasses.replace(item, record=outcome.record, schema=outcome.schema)
                )
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


def validate(batch: Batch, validator: SuiteValidator) -> Batch:
    pending = [i for i, item in enumerate(batch.items) if item.stopped_at is None]
    verdicts = validator.validate([batch.items[i].record for i in pending])
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
        hops.append(
            Hop(
                outcome=outcome,
                stopped_at=Stage(item.stopped_at) if item.stopped_at is not None else None,
                reasons=tuple(
                    Reason(rule=v.rule, message=clean(v.message)) for v in item.violations
                ),
                digest=received_digest(item),
                **_describe(item),
            )
        )
    return HopBatch(
        pipeline=pipeline,
        run_id=run_id,
        at=at or datetime.now(UTC),
        source_topic=clean(batch.topic),
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


def _describe(item: Item) -> dict[str, Any]:
    # Plain dict checks, not `Mapping` ones: this runs once per record on the hot path.
    record = item.record if isinstance(item.record, dict) else {}
    provenance = record.get("provenance")
    provenance = provenance if isinstance(provenance, dict) else {}
    generator = provenance.get("generator")
    parents = provenance.get("parent_record_ids")
    return {
        "record_id": _text(record.get("record_id")),
        "content_class": _text(provenance.get("content_class")),
        "origin_env": _text(provenance.get("origin_env")),
        "tenant_id": _text(record.get("tenant_id")),
        "source_system": _text(provenance.get("source_system")),
        "generator": _text(generator.get("name")) if isinstance(generator, dict) else None,
        "parent_record_ids": tuple(clean(p) for p in parents if isinstance(p, str))
        if isinstance(parents, list) and parents
        else (),
        "source_offset": item.source.offset,
    }


def _text(value: Any) -> str | None:
    return clean(value) if isinstance(value, str) else None


def clean(text: str) -> str:
    """Text a database can store: NUL and lone surrogates (possible in decoded JSON and Avro
    strings) become U+FFFD, so one odd record cannot stop the lineage store."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
