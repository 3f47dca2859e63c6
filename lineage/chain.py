"""Integrity at batch grain: chain entries, their links, and finding the first broken one.

Every written micro-batch is one *entry* of a chain; chains are kept per guard and source
partition (`pipeline/source_topic/source_partition`) and continue across runs. Two kinds of
entry:

- `hops`: a batch's hop rows, bound by their Merkle root (`lineage.hops.merkle_root`);
- `delivery`: what the destination acknowledged for an earlier `hops` entry of the same chain
  (`confirms` is its seq; `failed` lists the offsets it refused). It is appended only after
  the delivery reports came back, so an unacknowledged record is never shown as delivered.

Entry `seq` (1, 2, …) of a chain has

    hash = sha256(prev_hash || canonical_json(entry header))

where the header holds the chain id, seq, kind, pipeline, run, time, source partition, offset
range, row count, destinations, Merkle root and delivery facts, and `prev_hash` is the previous
entry's hash (64 zeros for the first). Each store also records every chain's head.

What a walk detects without a key: an edited, inserted or deleted hop row (the batch's Merkle
root or row count no longer matches), an edited entry (its hash), a deleted or inserted entry
(the next entry's `prev_hash`, or a seq gap), a deleted tail (the recorded head). What it cannot
see: someone with write access who recomputes every hash after an edit, head included, or
deletes a whole chain with its head. Signed checkpoints (`lineage.checkpoints`) close both;
a rollback of the newest entries with their checkpoint is seen against a checkpoint kept
outside the store (`check_held_heads`).

Pure: no database driver.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from lineage_guard.lineage.events import format_time
from lineage_guard.lineage.hops import Hop, HopBatch, merkle_root

GENESIS_HASH = "0" * 64  # the `prev_hash` of a chain's first entry


class EntryKind(StrEnum):
    HOPS = "hops"
    DELIVERY = "delivery"


@dataclass(frozen=True, kw_only=True)
class Failure:
    """A record the destination refused: its source offset and the destination's error."""

    offset: int
    error: str

    def to_list(self) -> list[Any]:
        return [self.offset, self.error]


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One link of a chain: a batch of hops, or the delivery facts of an earlier batch."""

    chain_id: str
    seq: int
    kind: EntryKind
    pipeline: str
    run_id: str
    at: datetime
    source_topic: str
    source_partition: int
    first_offset: int | None = None  # hops only
    last_offset: int | None = None
    count: int = 0  # hop rows (hops), or records acknowledged or refused (delivery)
    allowed_to: str | None = None
    quarantined_to: str | None = None
    root: str | None = None  # hops: the Merkle root of the rows
    confirms: int | None = None  # delivery: the seq of the hops entry it is about
    failed: tuple[Failure, ...] = field(default=())
    prev_hash: str
    hash: str

    def header(self) -> bytes:
        """The bytes the entry's hash covers (with `prev_hash` before them)."""
        return _CANONICAL.encode(
            {
                "chain_id": self.chain_id,
                "seq": self.seq,
                "kind": str(self.kind),
                "pipeline": self.pipeline,
                "run_id": self.run_id,
                "at": format_time(self.at),
                "source_topic": self.source_topic,
                "source_partition": self.source_partition,
                "first_offset": self.first_offset,
                "last_offset": self.last_offset,
                "count": self.count,
                "allowed_to": self.allowed_to,
                "quarantined_to": self.quarantined_to,
                "root": self.root,
                "confirms": self.confirms,
                "failed": [failure.to_list() for failure in self.failed],
            }
        ).encode("utf-8")

    def computed_hash(self) -> str:
        digest = hashlib.sha256(self.prev_hash.encode("ascii"))
        digest.update(self.header())
        return digest.hexdigest()


@dataclass(frozen=True, kw_only=True)
class ChainHead:
    """The last entry of a chain as the store recorded it: seq 0 and `GENESIS_HASH` when empty."""

    chain_id: str
    seq: int
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "seq": self.seq, "hash": self.hash}


def _sealed(entry: Entry) -> Entry:
    return dataclasses.replace(entry, hash=entry.computed_hash())


def hops_entry(batch: HopBatch, *, head: ChainHead | None) -> Entry:
    """The chain entry for `batch`, linked after `head` (None: a new chain)."""
    table = batch.table()
    offsets = table.offsets
    return _sealed(
        Entry(
            chain_id=batch.chain_id,
            seq=(head.seq if head else 0) + 1,
            kind=EntryKind.HOPS,
            pipeline=batch.pipeline,
            run_id=batch.run_id,
            at=batch.at,
            source_topic=batch.source_topic,
            source_partition=batch.source_partition,
            first_offset=min(offsets),
            last_offset=max(offsets),
            count=len(table),
            allowed_to=batch.allowed_to,
            quarantined_to=batch.quarantined_to,
            root=table.root(),
            prev_hash=head.hash if head else GENESIS_HASH,
            hash="",
        )
    )


def delivery_entry(
    confirmed: Entry, *, count: int, failed: Sequence[Failure], at: datetime, head: ChainHead
) -> Entry:
    """The delivery entry for the hops entry `confirmed`, linked after `head`."""
    return _sealed(
        Entry(
            chain_id=confirmed.chain_id,
            seq=head.seq + 1,
            kind=EntryKind.DELIVERY,
            pipeline=confirmed.pipeline,
            run_id=confirmed.run_id,
            at=at,
            source_topic=confirmed.source_topic,
            source_partition=confirmed.source_partition,
            count=count,
            confirms=confirmed.seq,
            failed=tuple(sorted(failed, key=lambda f: f.offset)),
            prev_hash=head.hash,
            hash="",
        )
    )


class BreakKind(StrEnum):
    EDITED = "edited"  # an entry's header or a hop row differs from what was written
    UNREADABLE = "unreadable"  # a stored value is not a valid field: edited
    DELETED = "deleted"  # entries or rows are missing: a seq gap, fewer rows, a short chain
    INSERTED = "inserted"  # a seq repeats, rows or entries beyond what was written
    RELINKED = "relinked"  # prev_hash is not the previous entry's hash
    HEAD = "head"  # the recorded head does not match the chain's last entry, or is missing
    SIGNATURE = "signature"  # a checkpoint's signature does not verify with the public key
    UNSIGNED = "unsigned"  # a chain a signed checkpoint names is gone, or was recomputed
    ROLLED_BACK = "rolled_back"  # the store no longer extends a checkpoint: newer ones deleted


@dataclass(frozen=True, kw_only=True)
class BrokenLink:
    """Where a chain first breaks (entry `seq`, optionally hop row `index`), and why."""

    chain_id: str
    seq: int | None
    index: int | None = None
    record_id: str | None = None
    kind: BreakKind
    description: str  # one line, names the chain, the seq and the record

    def to_dict(self) -> dict[str, object]:
        return {
            "chain_id": self.chain_id,
            "seq": self.seq,
            "index": self.index,
            "record_id": self.record_id,
            "kind": str(self.kind),
            "description": self.description,
        }


@dataclass(frozen=True, kw_only=True)
class Verification:
    """The outcome of walking chains: how much was checked, and the first broken link."""

    chains: int
    batches: int
    hops: int
    broken: BrokenLink | None
    signed_checkpoints: int = 0  # checkpoints whose signature verified (with a public key)

    @property
    def ok(self) -> bool:
        return self.broken is None

    @property
    def events(self) -> int:  # the number of rows walked, as earlier versions reported it
        return self.hops


@dataclass(frozen=True, kw_only=True)
class UnreadableRow:
    """A stored row that is no valid entry or hop (a value edited into something no writer
    writes)."""

    chain_id: str
    seq: int | None
    index: int | None = None
    error: str


RowsOf = Callable[[Entry], "Sequence[Hop | UnreadableRow]"]
# An entry's Merkle leaves computed straight from its stored rows (None: a row no written hop
# has): the fast path, tried before `RowsOf` reads each row into a `Hop`.
LeavesOf = Callable[[Entry], "Sequence[bytes] | None"]


def check_entry(
    entry: Entry | UnreadableRow,
    *,
    expected_seq: int,
    prev_hash: str,
    rows_of: RowsOf,
    leaves_of: LeavesOf | None = None,
    rows_proven: Callable[[Entry], bool] | None = None,
) -> tuple[BrokenLink | None, int]:
    """Check one entry against its predecessor's hash and, for `hops`, its rows; return the
    first break and the number of rows read. With `leaves_of`, rows whose leaves already
    give the entry's Merkle root are not read into hops; any other outcome is decided, and
    described, from `rows_of`. With `rows_proven`, an entry (its link and hash checked) whose
    rows it vouches for is not read at all (`SqlStore.verify_batches`' inclusion proofs)."""
    if isinstance(entry, UnreadableRow):
        return _unreadable(entry), 0
    at = f"chain `{entry.chain_id}` batch {entry.seq}"

    def broken(kind: BreakKind, text: str, **where: Any) -> BrokenLink:
        return BrokenLink(
            chain_id=entry.chain_id,
            seq=where.pop("seq", entry.seq),
            kind=kind,
            description=text,
            **where,
        )

    if entry.seq < expected_seq:
        return broken(BreakKind.INSERTED, f"{at} repeats a seq: an entry was inserted"), 0
    if entry.seq > expected_seq:
        gap = _gap(entry.chain_id, expected_seq, entry.seq - 1)
        text = f"{gap} missing: the chain jumps to batch {entry.seq}; deleted"
        return broken(BreakKind.DELETED, text, seq=expected_seq), 0
    if entry.prev_hash != prev_hash:
        text = (
            f"{at} does not link to batch {entry.seq - 1}: its prev_hash is not that entry's"
            " hash; an entry was deleted or inserted before it, or it was edited"
        )
        return broken(BreakKind.RELINKED, text), 0
    if entry.computed_hash() != entry.hash:
        text = f"{at} does not match its hash: the entry was edited after it was written"
        return broken(BreakKind.EDITED, text), 0
    if entry.kind is not EntryKind.HOPS or (rows_proven is not None and rows_proven(entry)):
        return None, 0
    if leaves_of is not None:
        leaves = leaves_of(entry)
        if (
            leaves is not None
            and len(leaves) == entry.count
            and merkle_root(list(leaves)) == entry.root
        ):
            return None, len(leaves)
    rows = rows_of(entry)
    for row in rows:
        if isinstance(row, UnreadableRow):
            return _unreadable(row), len(rows)
    hops = [row for row in rows if isinstance(row, Hop)]
    if len(hops) < entry.count:
        text = f"{at} holds {len(hops)} hop rows, {entry.count} were written: rows were deleted"
        return broken(BreakKind.DELETED, text), len(hops)
    if len(hops) > entry.count:
        text = f"{at} holds {len(hops)} hop rows, {entry.count} were written: rows were inserted"
        return broken(BreakKind.INSERTED, text), len(hops)
    if merkle_root([hop.canonical() for hop in hops]) != entry.root:
        text = f"{at} does not match its Merkle root: a hop row was edited or reordered"
        return broken(BreakKind.EDITED, text), len(hops)
    return None, len(hops)


def verify_chain(
    chain_id: str,
    entries: Iterable[Entry | UnreadableRow],
    head: ChainHead | None,
    rows_of: RowsOf,
    leaves_of: LeavesOf | None = None,
) -> tuple[BrokenLink | None, int, int, dict[int, str]]:
    """Walk one chain's entries in seq order. Returns the first break, the entries and rows
    read, and each seq's hash (for checkpoint checks)."""
    expected = 1
    prev_hash = GENESIS_HASH
    batches = rows = 0
    hashes: dict[int, str] = {}
    for entry in entries:
        batches += 1
        if head is not None and not isinstance(entry, UnreadableRow) and entry.seq > head.seq:
            text = (
                f"chain `{chain_id}` batch {entry.seq} lies beyond the chain's recorded head"
                f" (batch {head.seq}): the entry was inserted, or the head was altered"
            )
            beyond = BrokenLink(
                chain_id=chain_id, seq=entry.seq, kind=BreakKind.INSERTED, description=text
            )
            return beyond, batches, rows, hashes
        found, read = check_entry(
            entry, expected_seq=expected, prev_hash=prev_hash, rows_of=rows_of, leaves_of=leaves_of
        )
        rows += read
        if found is not None:
            return found, batches, rows, hashes
        assert isinstance(entry, Entry)
        hashes[entry.seq] = entry.hash
        prev_hash = entry.hash
        expected += 1
    last = expected - 1
    if head is None:
        text = (
            f"chain `{chain_id}` has {last} batches but no recorded head: the chain was forged"
            " or its head deleted"
        )
        found = BrokenLink(chain_id=chain_id, seq=last, kind=BreakKind.HEAD, description=text)
        return found, batches, rows, hashes
    if head.seq > last:
        text = (
            f"{_gap(chain_id, last + 1, head.seq)} missing: the chain's head records batch"
            f" {head.seq} but its last entry is batch {last}; deleted"
        )
        found = BrokenLink(
            chain_id=chain_id, seq=last + 1, kind=BreakKind.DELETED, description=text
        )
        return found, batches, rows, hashes
    if head.hash != prev_hash:
        text = (
            f"chain `{chain_id}` batch {last} does not match the chain's recorded head hash:"
            " the entry or the head was edited"
        )
        found = BrokenLink(chain_id=chain_id, seq=last, kind=BreakKind.HEAD, description=text)
        return found, batches, rows, hashes
    return None, batches, rows, hashes


def check_signed_heads(
    signed: Mapping[str, ChainHead], hashes: Mapping[str, Mapping[int, str]]
) -> BrokenLink | None:
    """Every head a verified checkpoint signed must still be in its chain with the signed
    hash: a recomputed chain, or a deleted chain, fails here."""
    for chain_id in sorted(signed):
        head = signed[chain_id]
        seen = hashes.get(chain_id)
        if seen is None:
            text = (
                f"chain `{chain_id}` was signed up to batch {head.seq}, but the store holds no"
                " entry of it: the chain was deleted"
            )
            return BrokenLink(
                chain_id=chain_id, seq=head.seq, kind=BreakKind.UNSIGNED, description=text
            )
        if seen.get(head.seq) != head.hash:
            text = (
                f"chain `{chain_id}` batch {head.seq} is not the batch a signed checkpoint"
                " covers: the chain was recomputed or truncated after an edit"
            )
            return BrokenLink(
                chain_id=chain_id, seq=head.seq, kind=BreakKind.UNSIGNED, description=text
            )
    return None


def check_held_heads(
    signed: Mapping[str, ChainHead], hashes: Mapping[str, Mapping[int, str]], held: str
) -> BrokenLink | None:
    """Every head of a checkpoint kept outside the store (`held` describes it) must still be
    in its chain with the signed hash: a store rolled back, or rewritten and recomputed,
    fails here even when its own newest checkpoint went with it."""
    for chain_id in sorted(signed):
        head = signed[chain_id]
        seen = hashes.get(chain_id, {})
        if head.seq and head.seq not in seen:
            text = (
                f"chain `{chain_id}` batch {head.seq}, which the held {held} signed, is no"
                f" longer in the store (it ends at batch {max(seen, default=0)}): the store was"
                " rolled back"
            )
            return BrokenLink(
                chain_id=chain_id, seq=head.seq, kind=BreakKind.ROLLED_BACK, description=text
            )
        if head.seq and seen[head.seq] != head.hash:
            text = (
                f"chain `{chain_id}` batch {head.seq} is not the batch the held {held} signed:"
                " the chain was rewritten and recomputed"
            )
            return BrokenLink(
                chain_id=chain_id, seq=head.seq, kind=BreakKind.UNSIGNED, description=text
            )
    return None


def _unreadable(row: UnreadableRow) -> BrokenLink:
    where = f"chain `{row.chain_id}` batch {row.seq if row.seq is not None else '?'}"
    if row.index is not None:
        where += f" row {row.index}"
    return BrokenLink(
        chain_id=row.chain_id,
        seq=row.seq,
        index=row.index,
        kind=BreakKind.UNREADABLE,
        description=f"{where} cannot be read ({row.error}): it was edited",
    )


def _record(record_id: str | None) -> str:
    return f"record `{record_id}`" if record_id is not None else "no record id"


def _gap(chain_id: str, first: int, last: int) -> str:
    if first == last:
        return f"chain `{chain_id}` batch {first} is"
    return f"chain `{chain_id}` batches {first}-{last} are"


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
