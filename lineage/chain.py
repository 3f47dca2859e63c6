"""Hash chains over lineage events: linking new events, and finding the first broken link.

Events are chained per `chain_id`. The pipeline starts one chain per written micro-batch,
`run_id/source_topic/source_partition/first_offset`, so that `trace` verifies a chain of a few
thousand events rather than a whole run's.
Event `seq` (1, 2, …) of a chain has

    hash = sha256(prev_hash || canonical_json(event, chain_id, seq))

where `prev_hash` is the previous event's hash, or 64 zeros (`GENESIS_HASH`) for the first.
Each store also records every chain's head (last seq and hash), so deleting the newest events
is detected too. Editing, inserting or deleting a single stored event, or the head, breaks the
chain at a link `first_break` names.

What the chain cannot see: someone able to write to the database who rewrites a chain's every
event after the edited one and its head, recomputing the hashes (SHA-256 has no key), or who
deletes a whole chain with its head row (with per-batch chains: a whole batch). Anchor the
heads elsewhere (e.g. in the run's OpenLineage events) to close that gap.

Pure: no database driver.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from lineage_guard.lineage.events import GENESIS_HASH, LineageEvent, StoredEvent, event_hash


@dataclass(frozen=True, kw_only=True)
class ChainHead:
    """The last link of a chain as the store recorded it: seq 0 and `GENESIS_HASH` when empty."""

    chain_id: str
    seq: int
    hash: str


@dataclass(frozen=True, kw_only=True)
class UnreadableEvent:
    """A stored row that is no valid event (a value edited into something no writer writes)."""

    chain_id: str
    seq: int | None
    record_id: str | None
    error: str


class BreakKind(StrEnum):
    EDITED = "edited"  # the event's content or hash differs from what was written
    UNREADABLE = "unreadable"  # a stored value is not a valid event field: edited
    DELETED = "deleted"  # seq numbers skip, or the chain ends before its head
    INSERTED = "inserted"  # a seq repeats, or events lie beyond the chain's head
    RELINKED = "relinked"  # prev_hash is not the previous event's hash
    HEAD = "head"  # the recorded head does not match the chain's last event, or is missing


@dataclass(frozen=True, kw_only=True)
class BrokenLink:
    """Where a chain first breaks: the event at `seq` (or the gap/head there), and why."""

    chain_id: str
    seq: int | None
    record_id: str | None
    kind: BreakKind
    description: str  # one line, names the chain, the seq and the record

    def to_dict(self) -> dict[str, object]:
        return {
            "chain_id": self.chain_id,
            "seq": self.seq,
            "record_id": self.record_id,
            "kind": str(self.kind),
            "description": self.description,
        }


@dataclass(frozen=True, kw_only=True)
class Verification:
    """The outcome of walking chains: how much was checked, and the first broken link."""

    chains: int
    events: int
    broken: BrokenLink | None

    @property
    def ok(self) -> bool:
        return self.broken is None


def link(
    events: Iterable[LineageEvent], *, chain_id: str, head: ChainHead | None
) -> list[StoredEvent]:
    """Chain `events`, in order, after `head` (None or seq 0: a new chain)."""
    seq = head.seq if head is not None else 0
    prev_hash = head.hash if head is not None else GENESIS_HASH
    stored = []
    for event in events:
        seq += 1
        digest = event_hash(event, chain_id=chain_id, seq=seq, prev_hash=prev_hash)
        stored.append(
            StoredEvent(event=event, chain_id=chain_id, seq=seq, prev_hash=prev_hash, hash=digest)
        )
        prev_hash = digest
    return stored


def head_after(
    stored: Sequence[StoredEvent], *, chain_id: str, head: ChainHead | None
) -> ChainHead:
    """The chain's head once `stored` (the output of `link`) is appended."""
    if stored:
        return ChainHead(chain_id=chain_id, seq=stored[-1].seq, hash=stored[-1].hash)
    return head or ChainHead(chain_id=chain_id, seq=0, hash=GENESIS_HASH)


def verify_chain(
    chain_id: str,
    stored: Iterable[StoredEvent | UnreadableEvent],
    head: ChainHead | None,
) -> tuple[BrokenLink | None, int]:
    """Walk one chain's stored events in seq order; return its first broken link and the count
    of events read. `head` is the chain's recorded head (None: no head recorded)."""
    expected = 1
    prev_hash = GENESIS_HASH
    prev_record: str | None = None
    count = 0

    def broken(seq: int | None, record_id: str | None, kind: BreakKind, text: str) -> BrokenLink:
        return BrokenLink(
            chain_id=chain_id, seq=seq, record_id=record_id, kind=kind, description=text
        )

    for item in stored:
        count += 1
        if isinstance(item, UnreadableEvent):
            at = _at(chain_id, item.seq, item.record_id)
            text = f"{at} cannot be read ({item.error}): the event was edited"
            return broken(item.seq, item.record_id, BreakKind.UNREADABLE, text), count
        record_id = item.event.record_id
        at = _at(chain_id, item.seq, record_id)
        if head is not None and item.seq > head.seq:
            text = (
                f"{at} lies beyond the chain's recorded head (seq {head.seq}):"
                " the event was inserted, or the head was altered"
            )
            return broken(item.seq, record_id, BreakKind.INSERTED, text), count
        if item.seq < expected:
            text = f"{at} repeats a seq or comes out of order: the event was inserted"
            return broken(item.seq, record_id, BreakKind.INSERTED, text), count
        if item.seq > expected:
            text = (
                f"{_gap(chain_id, expected, item.seq - 1)} missing: the chain jumps from"
                f" seq {expected - 1} ({_record(prev_record)}) to seq {item.seq}"
                f" ({_record(record_id)}); deleted"
            )
            return broken(expected, None, BreakKind.DELETED, text), count
        if item.prev_hash != prev_hash:
            text = (
                f"{at} does not link to seq {expected - 1} ({_record(prev_record)}): its"
                " prev_hash is not that event's hash; an event was inserted or deleted before"
                " it, or it was edited"
            )
            return broken(item.seq, record_id, BreakKind.RELINKED, text), count
        recomputed = event_hash(item.event, chain_id=chain_id, seq=item.seq, prev_hash=prev_hash)
        if recomputed != item.hash:
            text = f"{at} does not match its hash: the event was edited after it was written"
            return broken(item.seq, record_id, BreakKind.EDITED, text), count
        prev_hash = item.hash
        prev_record = record_id
        expected += 1

    last = expected - 1
    if head is None:
        text = (
            f"chain `{chain_id}` has {last} events but no recorded head: the chain was forged"
            f" or its head deleted (last event: seq {last}, {_record(prev_record)})"
        )
        return broken(last, prev_record, BreakKind.HEAD, text), count
    if head.seq > last:
        text = (
            f"{_gap(chain_id, last + 1, head.seq)} missing: the chain's head records seq"
            f" {head.seq} but its last event is seq {last} ({_record(prev_record)}); deleted"
        )
        return broken(last + 1, None, BreakKind.DELETED, text), count
    if head.hash != prev_hash:
        text = (
            f"{_at(chain_id, last, prev_record)} does not match the chain's recorded head hash:"
            " the event or the head was edited"
        )
        return broken(last, prev_record, BreakKind.HEAD, text), count
    return None, count


def first_break(
    stored: Iterable[StoredEvent | UnreadableEvent], heads: Mapping[str, ChainHead]
) -> Verification:
    """Verify every chain: `stored` holds all stored events ordered by (chain_id, seq), `heads`
    every recorded head. Chains are checked in the order they come, then heads without events."""
    chains = events = 0
    seen: set[str] = set()
    for chain_id, group in itertools.groupby(stored, key=lambda item: item.chain_id):
        chains += 1
        found, count = verify_chain(chain_id, group, heads.get(chain_id))
        events += count
        if found is not None:
            return Verification(chains=chains, events=events, broken=found)
        seen.add(chain_id)
    for chain_id in sorted(heads.keys() - seen):
        chains += 1
        found, _ = verify_chain(chain_id, (), heads[chain_id])
        if found is not None:
            return Verification(chains=chains, events=events, broken=found)
    return Verification(chains=chains, events=events, broken=None)


def _record(record_id: str | None) -> str:
    return f"record `{record_id}`" if record_id is not None else "no record id"


def _at(chain_id: str, seq: int | None, record_id: str | None) -> str:
    return f"chain `{chain_id}` seq {seq if seq is not None else '?'} ({_record(record_id)})"


def _gap(chain_id: str, first: int, last: int) -> str:
    if first == last:
        return f"chain `{chain_id}` seq {first} is"
    return f"chain `{chain_id}` seq {first}-{last} are"
