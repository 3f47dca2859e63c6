"""The per-stage view of lineage: what each stage of a guard decided about one record.

The store keeps one row per record per pass through a guard (a *hop*, `lineage.hops`); the
stages a record passed are a fixed sequence, so a hop expands into its `LineageEvent`s (source,
decode, validate, enforce, write) without storing them. `trace`, `leaks` and the report speak in
these events, as they did when every event was a row.

Pure: no database driver, no Beam, no Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any


class Stage(StrEnum):
    """The stages of the guard, in the order a record passes them."""

    SOURCE = "source"
    DECODE = "decode"
    VALIDATE = "validate"
    ENFORCE = "enforce"
    WRITE = "write"


STAGE_ORDER: dict[Stage, int] = {stage: rank for rank, stage in enumerate(Stage)}

# What every decision of the guard rests on: the record's metadata (its provenance block),
# never a watermark or forensic detection of the content (Code of Practice, Commitment 2).
# Shown as `basis` where verdicts are: validate's JSON and JUnit, the report, the evidence pack.
BASIS = "metadata"


class Decision(StrEnum):
    PASSED = "passed"  # the stage let the record go on
    QUARANTINED = "quarantined"  # sent to the quarantine topic (undecodable, invalid provenance)
    BLOCKED = "blocked"  # a sink policy refused it (leak, tenant, training mix)
    DELIVERED = "delivered"  # the destination acknowledged it (the allowed topic, or a file)
    SENDING = "sending"  # handed to the destination, no acknowledgement recorded (yet)
    FAILED = "failed"  # the destination refused it: it is not there
    HANDED_ON = "handed_on"  # passed to the next transform of the same pipeline (`RecordHop`)


@dataclass(frozen=True, kw_only=True)
class Reason:
    rule: str  # e.g. "generator_required", "leak_test_origin"
    message: str  # a sentence that names the record and the field

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message}


@dataclass(frozen=True, kw_only=True)
class LineageEvent:
    """What `stage` decided about one record (or about undecodable bytes, `record_id` None).

    `at` must be timezone-aware; it is kept in UTC, truncated to the millisecond that the
    canonical form (and so the hash) covers.
    """

    record_id: str | None
    stage: Stage
    pipeline: str
    run_id: str
    at: datetime
    decision: Decision
    reasons: tuple[Reason, ...] = field(default=())
    content_class: str | None = None
    origin_env: str | None = None
    tenant_id: str | None = None
    source_system: str | None = None
    generator: str | None = None
    parent_record_ids: tuple[str, ...] = field(default=())
    source_topic: str
    source_partition: int
    source_offset: int
    destination: str | None = None  # the topic written to, or the file path in file mode

    def __post_init__(self) -> None:
        at = self.at
        if at.tzinfo is not UTC or at.microsecond % 1000:
            if at.tzinfo is None or at.utcoffset() is None:
                raise ValueError(f"LineageEvent.at must be timezone-aware, got `{at!r}`")
            at = at.astimezone(UTC)
            object.__setattr__(self, "at", at.replace(microsecond=at.microsecond // 1000 * 1000))
        # Accept the plain strings a database returns; keep the closed sets closed.
        if type(self.stage) is not Stage:
            object.__setattr__(self, "stage", Stage(self.stage))
        if type(self.decision) is not Decision:
            object.__setattr__(self, "decision", Decision(self.decision))
        if type(self.reasons) is not tuple:
            object.__setattr__(self, "reasons", tuple(self.reasons))
        if type(self.parent_record_ids) is not tuple:
            object.__setattr__(self, "parent_record_ids", tuple(self.parent_record_ids))

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready values (times as canonical strings)."""
        return {
            "record_id": self.record_id,
            "stage": str(self.stage),
            "pipeline": self.pipeline,
            "run_id": self.run_id,
            "at": format_time(self.at),
            "decision": str(self.decision),
            "reasons": [reason.to_dict() for reason in self.reasons],
            "content_class": self.content_class,
            "origin_env": self.origin_env,
            "tenant_id": self.tenant_id,
            "source_system": self.source_system,
            "generator": self.generator,
            "parent_record_ids": list(self.parent_record_ids),
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "destination": self.destination,
        }


@dataclass(frozen=True, kw_only=True)
class StoredEvent:
    """An event derived from a stored hop: the hop is row `index` of batch `seq` in chain
    `chain_id`; `digest` is the SHA-256 of the record's bytes as the guard received them."""

    event: LineageEvent
    chain_id: str
    seq: int
    index: int
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.event.to_dict(),
            "chain_id": self.chain_id,
            "seq": self.seq,
            "index": self.index,
            "digest": self.digest,
        }


@lru_cache(maxsize=1024)  # a batch's events share their time: format it once
def format_time(at: datetime) -> str:
    """`2026-11-27T12:00:00.123Z`: ISO-8601, UTC, millisecond precision, fixed width."""
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return at.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_time(text: str) -> datetime:
    """The inverse of `format_time`; also accepts any ISO-8601 time with an offset."""
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise ValueError(f"time `{text}` has no UTC offset")
    return at.astimezone(UTC)
