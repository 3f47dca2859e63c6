"""The lineage hop: one row per record per pass through a guard, and a batch's Merkle root.

A guard (a pipeline, named by `--pipeline-name` or by the data engineer's stage name) passes
each record once through its fixed sequence of stages (`events.Stage`): a `Hop` says where the
record came from, what the guard decided (delivered to the allowed destination, quarantined or
blocked), at which stage it stopped and why, the record's provenance, and the SHA-256 of its
bytes as received. The per-stage events an auditor reads are derived from it
(`StoredHop.events`).

The hops of one written micro-batch share a `HopBatch` header (pipeline, run, time, source
partition, destinations) and are bound by a Merkle root over their leaves (RFC 6962's tree:
`leaf = sha256(0x00 || canonical hop)`, `node = sha256(0x01 || left || right)`), which the
batch's chain entry carries (`lineage.chain`).

Pure: no database driver, no Beam, no Kafka.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from itertools import repeat
from typing import Any

import orjson

from lineage_guard.lineage.events import (
    Decision,
    LineageEvent,
    Reason,
    Stage,
    StoredEvent,
)
from lineage_guard.lineage.hashes import native


class Outcome(StrEnum):
    """Where the guard sent the record (whether it arrived is the delivery entry's to say)."""

    DELIVERED = "delivered"  # to the allowed (production) destination
    QUARANTINED = "quarantined"  # to quarantine: undecodable, invalid provenance, refused
    BLOCKED = "blocked"  # to quarantine: a sink policy refused it (leak, tenant, training)


class Delivery(StrEnum):
    """What the destination acknowledged for a hop's record."""

    CONFIRMED = "confirmed"  # acknowledged (Kafka delivery report, file flushed)
    UNCONFIRMED = "unconfirmed"  # sent, no acknowledgement recorded: a crash, a stop
    FAILED = "failed"  # refused by the destination: the record is not there


@dataclass(frozen=True, kw_only=True, slots=True)
class Hop:
    record_id: str | None  # None: undecodable bytes (the source position identifies them)
    source_offset: int
    outcome: Outcome
    stopped_at: Stage | None = None  # the stage that quarantined or blocked it
    reasons: tuple[Reason, ...] = field(default=())
    content_class: str | None = None
    origin_env: str | None = None
    tenant_id: str | None = None
    source_system: str | None = None
    generator: str | None = None
    parent_record_ids: tuple[str, ...] = field(default=())
    digest: str  # SHA-256 (hex) of the record's bytes as received

    def __post_init__(self) -> None:
        # Accept the plain strings a database returns; keep the closed sets closed.
        if type(self.outcome) is not Outcome:
            object.__setattr__(self, "outcome", Outcome(self.outcome))
        if self.stopped_at is not None and type(self.stopped_at) is not Stage:
            object.__setattr__(self, "stopped_at", Stage(self.stopped_at))
        if type(self.reasons) is not tuple:
            object.__setattr__(self, "reasons", tuple(self.reasons))
        if type(self.parent_record_ids) is not tuple:
            object.__setattr__(self, "parent_record_ids", tuple(self.parent_record_ids))

    def canonical(self) -> bytes:
        """The bytes a Merkle leaf hashes: the hop's fields as a compact JSON array, in the
        order of the dataclass. Never change it for hops already written."""
        return compact_json(
            [
                self.record_id,
                self.source_offset,
                str(self.outcome),
                str(self.stopped_at) if self.stopped_at is not None else None,
                [[reason.rule, reason.message] for reason in self.reasons],
                self.content_class,
                self.origin_env,
                self.tenant_id,
                self.source_system,
                self.generator,
                list(self.parent_record_ids),
                self.digest,
            ]
        )


def stored_leaf(
    record_id: Any, source_offset: Any, outcome: Any, stopped_at: Any, reasons: Any,
    content_class: Any, origin_env: Any, tenant_id: Any, source_system: Any, generator: Any,
    parents: Any, digest: Any,
) -> bytes:  # fmt: skip
    """`Hop.canonical()` of a hop in the columns the SQL stores keep it in (reasons and
    parents as their compact JSON text or NULL, the digest as raw bytes), without building
    the `Hop`: the fast path of verification. The reasons and parents are parsed and written
    again, so the leaf equals the written one only if every column holds exactly the value
    that was written. Raises (TypeError, ValueError, AttributeError) on a column no written
    hop has; the verifier then reads the rows one by one to name the fault."""
    return orjson.dumps(
        [
            record_id,
            source_offset,
            outcome,
            stopped_at,
            orjson.loads(reasons) if reasons is not None else [],
            content_class,
            origin_env,
            tenant_id,
            source_system,
            generator,
            orjson.loads(parents) if parents is not None else [],
            digest.hex(),
        ]
    )


class HopRows:
    """A batch's hops as columns (a Python list per field, one entry per record, in `FIELDS`
    order; reasons as (rule, message) pairs): what the stores write and the Merkle leaves
    hash, without a `Hop` object per record (the columnar chain builds them this way)."""

    FIELDS = (
        "record_id", "source_offset", "outcome", "stopped_at", "reasons", "content_class",
        "origin_env", "tenant_id", "source_system", "generator", "parent_record_ids", "digest",
    )  # fmt: skip

    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self.columns = columns

    @classmethod
    def of(cls, hops: Sequence[Hop]) -> HopRows:
        """`hops` as columns."""
        return cls(
            {
                "record_id": [h.record_id for h in hops],
                "source_offset": [h.source_offset for h in hops],
                "outcome": [str(h.outcome) for h in hops],
                "stopped_at": [str(h.stopped_at) if h.stopped_at else None for h in hops],
                "reasons": [tuple((r.rule, r.message) for r in h.reasons) for h in hops],
                "content_class": [h.content_class for h in hops],
                "origin_env": [h.origin_env for h in hops],
                "tenant_id": [h.tenant_id for h in hops],
                "source_system": [h.source_system for h in hops],
                "generator": [h.generator for h in hops],
                "parent_record_ids": [h.parent_record_ids for h in hops],
                "digest": [h.digest for h in hops],
            }
        )

    def __len__(self) -> int:
        return len(self.columns["digest"])

    @property
    def offsets(self) -> list[int]:
        return self.columns["source_offset"]

    def rows(self) -> list[tuple[Any, ...]]:
        """One tuple per hop, in `FIELDS` order."""
        return list(zip(*(self.columns[name] for name in self.FIELDS), strict=True))

    def leaves(self) -> list[bytes]:
        """`Hop.canonical()` of every row: the compact JSON array the Merkle leaves hash."""
        leaves = []
        dumps = orjson.dumps  # tuples as JSON arrays, as lists
        for row in self.rows():
            try:
                leaves.append(dumps(row))
            except (orjson.JSONEncodeError, TypeError):
                values = list(row)
                values[4] = [list(reason) for reason in row[4]]
                values[10] = list(row[10])
                leaves.append(compact_json(values))  # as `compact_json` decides
        return leaves

    def root(self) -> str:
        return merkle_root(self.leaves())

    def store_rows(self, entry_id: int) -> list[tuple[Any, ...]]:
        """The rows as the SQL stores keep them (`stores.sql.HOP_COLUMNS`): reasons and
        parents as compact JSON text or NULL, the digest as raw bytes."""
        c = self.columns
        n = len(self)
        reasons = [_text([list(r) for r in rs]) if rs else None for rs in c["reasons"]]
        parents = [_text(list(ps)) if ps else None for ps in c["parent_record_ids"]]
        return list(
            zip(
                repeat(entry_id, n), range(n), c["record_id"], c["source_offset"], c["outcome"],
                c["stopped_at"], reasons, c["content_class"], c["origin_env"], c["tenant_id"],
                c["source_system"], c["generator"], parents, map(bytes.fromhex, c["digest"]),
                strict=True,
            )
        )  # fmt: skip

    def hops(self) -> tuple[Hop, ...]:
        """The same rows as `Hop` values."""
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


def _text(value: Any) -> str:
    return compact_json(value).decode("utf-8")


@dataclass(frozen=True, kw_only=True)
class HopBatch:
    """What one guard did with one micro-batch of one source partition (or input file)."""

    pipeline: str
    run_id: str
    at: datetime
    source_topic: str
    source_partition: int
    allowed_to: str
    quarantined_to: str
    hops: tuple[Hop, ...] = ()
    rows: HopRows | None = None  # the hops as columns, instead of `hops`

    def __post_init__(self) -> None:
        if not (self.hops or (self.rows is not None and len(self.rows))):
            raise ValueError("a HopBatch holds at least one hop")
        if self.hops and self.rows is not None:
            raise ValueError("a HopBatch holds its hops or their rows, not both")
        at = self.at
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"HopBatch.at must be timezone-aware, got `{at!r}`")
        at = at.astimezone(UTC)
        object.__setattr__(self, "at", at.replace(microsecond=at.microsecond // 1000 * 1000))

    @property
    def chain_id(self) -> str:
        """Batches are chained per guard and source partition, across runs."""
        return chain_id_of(self.pipeline, self.source_topic, self.source_partition)

    def table(self) -> HopRows:
        """The batch's hops as columns (`rows`, or `hops` turned into them)."""
        return self.rows if self.rows is not None else HopRows.of(self.hops)

    def all_hops(self) -> tuple[Hop, ...]:
        """The batch's hops as `Hop` values (`hops`, or `rows` turned into them)."""
        return self.rows.hops() if self.rows is not None else self.hops

    def root(self) -> str:
        if self.rows is not None:
            return self.rows.root()
        return merkle_root([hop.canonical() for hop in self.hops])


HANDOFF = "pipeline:"  # a destination inside the same pipeline (`RecordHop`), not a delivery


def is_handoff(destination: str) -> bool:
    return destination.startswith(HANDOFF)


def chain_id_of(pipeline: str, source_topic: str, source_partition: int) -> str:
    return f"{pipeline}/{source_topic}/{source_partition}"


def record_digest(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


def merkle_root(leaves: list[bytes]) -> str:
    """RFC 6962 Merkle tree hash of `leaves` (hex). An odd node is carried up unchanged, which
    gives the same tree as RFC 6962's split at the largest power of two below n. Computed by
    the native extension when installed (`hashes.native`), else by `reference_merkle_nodes`
    and `merkle_root_of` here: the reference, byte for byte the same."""
    fast = native()
    if fast is not None:
        return fast.merkle_root(leaves)
    if not leaves:
        return hashlib.sha256(b"").hexdigest()
    return merkle_root_of(reference_merkle_nodes(leaves, 0))


def merkle_nodes(leaves: list[bytes], height: int) -> list[bytes]:
    """The nodes of `merkle_root`'s tree `height` levels above its leaves (0: the hashed
    leaves): node i stands for leaves i·2^height to (i+1)·2^height - 1, so the nodes of any
    aligned block of 2^height leaves (or the last, shorter one) are one node of the tree.
    Computed by the native extension when installed, else by `reference_merkle_nodes`."""
    fast = native()
    if fast is None:
        return reference_merkle_nodes(leaves, height)
    joined: bytes = fast.merkle_nodes(leaves, height)
    return [joined[i : i + 32] for i in range(0, len(joined), 32)]


def reference_merkle_nodes(leaves: list[bytes], height: int) -> list[bytes]:
    """`merkle_nodes` in Python: the reference the native extension is held to."""
    level = [hashlib.sha256(b"\x00" + leaf).digest() for leaf in leaves]
    for _ in range(height):
        level = _paired(level)
    return level


def merkle_root_of(nodes: list[bytes]) -> str:
    """The root (hex) above one level of nodes of `merkle_root`'s tree."""
    level = nodes
    while len(level) > 1:
        level = _paired(level)
    return level[0].hex()


def _paired(level: list[bytes]) -> list[bytes]:
    paired = [
        hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
        for i in range(0, len(level) - 1, 2)
    ]
    if len(level) % 2:
        paired.append(level[-1])
    return paired


@dataclass(frozen=True, kw_only=True)
class StoredHop:
    """A hop as a store holds it, with its batch header and what the destination acknowledged."""

    hop: Hop
    pipeline: str
    run_id: str
    at: datetime
    source_topic: str
    source_partition: int
    destination: str  # the batch's allowed or quarantine destination, by the hop's outcome
    chain_id: str
    seq: int  # the batch's position in its chain
    index: int  # the hop's position in its batch
    delivery: Delivery
    delivery_error: str | None = None

    def events(self) -> list[StoredEvent]:
        """The stages the record passed, in order, ending with where it was written."""
        hop = self.hop
        common: dict[str, Any] = {
            "record_id": hop.record_id,
            "pipeline": self.pipeline,
            "run_id": self.run_id,
            "at": self.at,
            "content_class": hop.content_class,
            "origin_env": hop.origin_env,
            "tenant_id": hop.tenant_id,
            "source_system": hop.source_system,
            "generator": hop.generator,
            "parent_record_ids": hop.parent_record_ids,
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": hop.source_offset,
        }
        stopped = Decision.BLOCKED if hop.outcome is Outcome.BLOCKED else Decision.QUARANTINED
        events = []
        for stage in (Stage.SOURCE, Stage.DECODE, Stage.VALIDATE, Stage.ENFORCE):
            if stage == hop.stopped_at:
                events.append(
                    LineageEvent(stage=stage, decision=stopped, reasons=hop.reasons, **common)
                )
                break
            events.append(LineageEvent(stage=stage, decision=Decision.PASSED, **common))
        if self.delivery is Delivery.CONFIRMED:
            written = (
                Decision.DELIVERED if hop.outcome is Outcome.DELIVERED else Decision.QUARANTINED
            )
            if written is Decision.DELIVERED and is_handoff(self.destination):
                written = Decision.HANDED_ON  # to the next transform: delivered nowhere yet
        elif self.delivery is Delivery.FAILED:
            written = Decision.FAILED
        else:
            written = Decision.SENDING
        reasons = hop.reasons
        if written is Decision.FAILED and self.delivery_error:
            reasons = (*reasons, Reason(rule="delivery_failed", message=self.delivery_error))
        events.append(
            LineageEvent(
                stage=Stage.WRITE,
                decision=written,
                reasons=reasons
                if hop.outcome is not Outcome.DELIVERED or written is Decision.FAILED
                else (),
                destination=self.destination,
                **common,
            )
        )
        return [
            StoredEvent(
                event=event,
                chain_id=self.chain_id,
                seq=self.seq,
                index=self.index,
                digest=hop.digest,
            )
            for event in events
        ]


# One encoder for every hop: `json.dumps` with options builds a new encoder per call.
def compact_json(value: Any) -> bytes:
    """`value` as compact JSON in UTF-8, exactly as the standard library writes it with
    `separators=(",", ":"), ensure_ascii=False, allow_nan=False`: the form of every Merkle
    leaf ever written. orjson writes the same bytes for the values hops hold (strings, ints,
    None, lists; `test_lineage_integrity` checks every Unicode code point) ten times faster;
    what it refuses (a lone surrogate, an integer past 64 bits) goes to the standard library,
    which then decides as it always did."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return _STDLIB_COMPACT.encode(value).encode("utf-8")


_STDLIB_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
