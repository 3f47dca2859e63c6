"""Audit answers over a `LineageStore`.

- `trace`: which guards and stages touched record X, what each decided, the same for its
  ancestors (`parent_record_ids`, followed recursively), and whether each batch its hops are
  in is intact.
- `leaks`: did any record from TEST/STAGING, or with failed provenance, reach a production
  destination (must be none while the guard is in place)? Only deliveries the destination
  acknowledged count as reached; sends with no acknowledgement are listed apart. And which
  such attempts did the guard block?
- `verify`: the first broken link in any chain (and, with a public key, any checkpoint), or
  None.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lineage_guard.lineage.bounds import lookup_ids
from lineage_guard.lineage.chain import BrokenLink, Verification
from lineage_guard.lineage.events import Decision, Reason, Stage, StoredEvent, format_time
from lineage_guard.lineage.hops import Delivery, is_handoff
from lineage_guard.lineage.store import LineageStore, order_key

PRODUCTION = "PRODUCTION"  # the only `origin_env` that may reach a production destination
LEAK_RULE_PREFIX = "leak_"  # enforce-stage reasons of the production sink policy


@dataclass(frozen=True, kw_only=True)
class ChainStatus:
    """Whether a batch (entry `seq` of chain `chain_id`) was checked, and where it breaks."""

    chain_id: str
    seq: int
    verified: bool  # False: not checked (`trace(..., verify_chains=False)`)
    broken: BrokenLink | None
    # Set when only the traced hops' rows were read (`lineage.proofs`): when the whole batch
    # was read and found intact by this process. None: every row was read just now.
    read_whole_at: datetime | None = None

    @property
    def checked(self) -> str:
        """What was checked: `batch` (every row against the Merkle root, the link and hash),
        `rows` (the link and hash, and the traced hops' rows by inclusion proof), or `none`."""
        if not self.verified:
            return "none"
        return "batch" if self.read_whole_at is None or self.broken else "rows"

    @property
    def ok(self) -> bool:
        return self.verified and self.broken is None

    @property
    def status(self) -> str:
        """`ok`, `broken` or `unverified`."""
        if not self.verified:
            return "unverified"
        return "ok" if self.broken is None else "broken"

    def describe(self) -> str:
        where = f"chain `{self.chain_id}` batch {self.seq}"
        if not self.verified:
            return f"{where}: not verified"
        if self.broken is not None:
            return f"{where}: BROKEN: {self.broken.description}"
        if self.read_whole_at is not None:
            return (
                f"{where}: verified ok (link and hash; the traced hops' rows by inclusion proof"
                f" under its Merkle root; every row read at {format_time(self.read_whole_at)})"
            )
        return f"{where}: verified ok (Merkle root and link)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "seq": self.seq,
            "status": self.status,
            "checked": self.checked,
            "read_whole_at": format_time(self.read_whole_at) if self.read_whole_at else None,
            "broken": self.broken.to_dict() if self.broken is not None else None,
        }


@dataclass(frozen=True, kw_only=True)
class TracedEvent:
    stored: StoredEvent
    depth: int  # 0: the traced record; 1: a parent; 2: a grandparent; …
    chain: ChainStatus
    redelivery: bool = False  # the same bytes from the same source position passed before

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.stored.to_dict(),
            "depth": self.depth,
            "chain_status": self.chain.status,
            "redelivery": self.redelivery,
        }


@dataclass(frozen=True, kw_only=True)
class Trace:
    record_id: str
    events: tuple[TracedEvent, ...]  # the record's and its ancestors' events, in time order
    chains: tuple[ChainStatus, ...]  # every batch those events are in
    missing_ancestors: tuple[str, ...]  # parent ids named by events, with no events of their own

    @property
    def found(self) -> bool:
        """Whether the store holds any event of the traced record itself."""
        return any(traced.depth == 0 for traced in self.events)

    @property
    def intact(self) -> bool:
        """No chain of these events is broken (unverified chains count as intact)."""
        return all(chain.broken is None for chain in self.chains)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_id": self.record_id,
            "found": self.found,
            "intact": self.intact,
            "events": [traced.to_dict() for traced in self.events],
            "chains": [chain.to_dict() for chain in self.chains],
            "missing_ancestors": list(self.missing_ancestors),
        }


@dataclass(frozen=True, kw_only=True)
class Leak:
    """A record delivered to a production destination that must never have reached it."""

    stored: StoredEvent  # the `write` event: `delivered`, or `sending` (no acknowledgement)
    why: tuple[Reason, ...]  # rules `origin_not_production`, `failed_validation`

    def to_dict(self) -> dict[str, Any]:
        return {**self.stored.to_dict(), "why": [reason.to_dict() for reason in self.why]}


@dataclass(frozen=True, kw_only=True)
class LeakReport:
    since: datetime | None
    until: datetime | None
    production_destinations: frozenset[str] | None  # None: every delivery counts
    leaks: tuple[Leak, ...]  # acknowledged deliveries, in time order: none while the guard works
    unconfirmed: tuple[Leak, ...]  # sent there, never acknowledged: maybe arrived, maybe not
    blocked: tuple[StoredEvent, ...]  # leak attempts the guard blocked, in time order

    def to_dict(self) -> dict[str, Any]:
        destinations = self.production_destinations
        return {
            "since": format_time(self.since) if self.since is not None else None,
            "until": format_time(self.until) if self.until is not None else None,
            "production_destinations": sorted(destinations) if destinations is not None else None,
            "leaks": [leak.to_dict() for leak in self.leaks],
            "unconfirmed": [leak.to_dict() for leak in self.unconfirmed],
            "blocked": [stored.to_dict() for stored in self.blocked],
        }


def trace(store: LineageStore, record_id: str, *, verify_chains: bool = True) -> Trace:
    """Every event of `record_id` and of its ancestors (cycle-safe), with the status of each
    batch they are in (its rows against its Merkle root, its link to the batch before)."""
    # The record as asked for and as its hops may keep it (`lineage.bounds.lookup_ids`).
    depth_of: dict[str, int] = dict.fromkeys(lookup_ids([record_id]), 0)
    found: list[StoredEvent] = []
    missing: list[str] = []
    frontier = [record_id]
    depth = 0
    while frontier:
        events = store.trace_many(frontier)
        found.extend(events)
        seen = {stored.event.record_id for stored in events}
        if depth > 0:
            missing.extend(rid for rid in frontier if rid not in seen)
        depth += 1
        frontier = []
        for stored in events:
            for parent in stored.event.parent_record_ids:
                if parent not in depth_of:
                    depth_of[parent] = depth
                    frontier.append(parent)

    # The hops of each batch that the trace shows: a batch read whole before is proven by
    # those rows only (`lineage.proofs`).
    batches: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for stored in found:
        batches[stored.chain_id][stored.seq].add(stored.index)
    statuses: dict[tuple[str, int], ChainStatus] = {}
    for chain_id in sorted(batches):
        rows = batches[chain_id]
        proven: dict[int, datetime] = {}
        results = (
            store.verify_batches(chain_id, rows, rows=rows, proven=proven) if verify_chains else {}
        )
        for seq in sorted(rows):
            statuses[(chain_id, seq)] = ChainStatus(
                chain_id=chain_id,
                seq=seq,
                verified=verify_chains,
                broken=results.get(seq),
                read_whole_at=proven.get(seq),
            )
    passes: dict[tuple[Any, ...], tuple[str, int, int]] = {}
    traced = []
    for stored in sorted(found, key=order_key):
        event = stored.event
        # A re-delivery: the same bytes from the same source position, in another batch.
        key = (event.record_id, stored.digest, event.pipeline, event.source_topic,
               event.source_partition, event.source_offset)  # fmt: skip
        where = (stored.chain_id, stored.seq, stored.index)
        first = passes.setdefault(key, where)
        traced.append(
            TracedEvent(
                stored=stored,
                depth=depth_of[str(event.record_id)],
                chain=statuses[(stored.chain_id, stored.seq)],
                redelivery=first != where,
            )
        )
    return Trace(
        record_id=record_id,
        events=tuple(traced),
        chains=tuple(statuses.values()),
        missing_ancestors=tuple(missing),
    )


def leaks(
    store: LineageStore,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    production_destinations: Collection[str] | None = None,
    blocked: bool = True,
) -> LeakReport:
    """Real leaks and blocked leak attempts in batches written with `since <= at < until`.

    A real leak is a delivery to a production destination (any destination when
    `production_destinations` is None: under the production policy the guard's allowed topic
    is the production sink) of a record whose `origin_env` is not PRODUCTION, or whose same
    bytes failed validation in any guard. Deliveries the destination acknowledged are `leaks`;
    sends never acknowledged are `unconfirmed`. The same record re-delivered after a crash is
    one leak, not two. A blocked attempt is a hop blocked at `enforce` with a `leak_…` reason
    or a non-PRODUCTION origin (left out when `blocked` is False: the console's overview
    counts leaks only).

    The store finds the candidates in SQL (`LineageStore.suspect_deliveries` and
    `blocked_attempts`: a superset, through its indexes); these rules decide among them, so
    the answer is the one a scan of every hop would give.
    """
    destinations = None if production_destinations is None else frozenset(production_destinations)
    # The store narrows (`suspect_deliveries`, in SQL); the rules below decide, on its rows.
    delivered = [
        hop.events()[-1]
        for hop in store.suspect_deliveries(since=since, until=until, destinations=destinations)
        if (destinations is None or hop.destination in destinations)
        and not is_handoff(hop.destination)  # handed to the next transform: not a delivery
        and hop.delivery is not Delivery.FAILED  # refused by the destination: it is not there
    ]
    confirmed: dict[tuple[Any, ...], Leak] = {}
    unconfirmed: dict[tuple[Any, ...], Leak] = {}
    for leak in _leaks_among(store, delivered):
        event = leak.stored.event
        key = (event.record_id, leak.stored.digest, event.destination)
        if leak.stored.event.decision is Decision.DELIVERED:
            confirmed.setdefault(key, leak)
        else:
            unconfirmed.setdefault(key, leak)
    attempts = [
        stored
        for hop in (store.blocked_attempts(since=since, until=until) if blocked else ())
        for stored in hop.events()
        if stored.event.stage == Stage.ENFORCE
        and (
            stored.event.origin_env != PRODUCTION
            or any(reason.rule.startswith(LEAK_RULE_PREFIX) for reason in stored.event.reasons)
        )
    ]
    return LeakReport(
        since=since,
        until=until,
        production_destinations=destinations,
        leaks=tuple(confirmed.values()),
        unconfirmed=tuple(leak for k, leak in unconfirmed.items() if k not in confirmed),
        blocked=tuple(attempts),
    )


def verify(store: LineageStore, *, public_key: Any = None) -> Verification:
    """Every chain walked (and, with an Ed25519 `public_key`, every checkpoint it signed)."""
    return store.verify(public_key=public_key)


def _leaks_among(store: LineageStore, delivered: list[StoredEvent]) -> Iterable[Leak]:
    """The leaks among `delivered` production deliveries (write events)."""
    ids = {stored.event.record_id for stored in delivered if stored.event.record_id is not None}
    failed: dict[tuple[str | None, str], list[str]] = defaultdict(list)
    for stored in (
        store.trace_many(ids, stage=Stage.VALIDATE, decisions=[Decision.QUARANTINED]) if ids else ()
    ):
        rules = [reason.rule for reason in stored.event.reasons]
        failed[(stored.event.record_id, stored.digest)].extend(rules or ["quarantined"])
    for stored in delivered:
        event = stored.event
        why: list[Reason] = []
        if event.origin_env != PRODUCTION:
            why.append(
                Reason(
                    rule="origin_not_production",
                    message=(
                        f"Record `{event.record_id}` from origin_env `{event.origin_env}` was"
                        f" delivered to production destination `{event.destination}`."
                    ),
                )
            )
        if failed_rules := failed.get((event.record_id, stored.digest)):
            why.append(
                Reason(
                    rule="failed_validation",
                    message=(
                        f"Record `{event.record_id}` failed validation"
                        f" ({', '.join(dict.fromkeys(failed_rules))}) but was delivered to"
                        f" production destination `{event.destination}`."
                    ),
                )
            )
        if why:
            yield Leak(stored=stored, why=tuple(why))
