"""Audit answers over a `LineageStore`.

- `trace`: which stages touched record X, what each decided, the same for its ancestors
  (`parent_record_ids`, followed recursively), and whether each event's chain is intact.
- `leaks`: did any record from TEST/STAGING, or with failed provenance, reach a production
  destination (must be none while the guard is in place)? And which such attempts did the guard
  block?
- `verify`: the first broken link in any chain, or None.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lineage_guard.lineage.chain import BrokenLink
from lineage_guard.lineage.events import Decision, Reason, Stage, StoredEvent, format_time
from lineage_guard.lineage.store import LineageStore, order_key

PRODUCTION = "PRODUCTION"  # the only `origin_env` that may reach a production destination
LEAK_RULE_PREFIX = "leak_"  # enforce-stage reasons of the production sink policy
CHECK_CHUNK = 1000  # delivered events whose validation is looked up per query


@dataclass(frozen=True, kw_only=True)
class ChainStatus:
    """Whether a chain was walked, and where it first breaks (None: intact)."""

    chain_id: str
    verified: bool  # False: not walked (`trace(..., verify_chains=False)`)
    events: int  # events walked
    broken: BrokenLink | None

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
        if not self.verified:
            return f"chain `{self.chain_id}`: not verified"
        if self.broken is None:
            return f"chain `{self.chain_id}`: verified ok ({self.events} events)"
        return f"chain `{self.chain_id}`: BROKEN: {self.broken.description}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "status": self.status,
            "events": self.events,
            "broken": self.broken.to_dict() if self.broken is not None else None,
        }


@dataclass(frozen=True, kw_only=True)
class TracedEvent:
    stored: StoredEvent
    depth: int  # 0: the traced record; 1: a parent; 2: a grandparent; …
    chain: ChainStatus

    def to_dict(self) -> dict[str, Any]:
        return {**self.stored.to_dict(), "depth": self.depth, "chain_status": self.chain.status}


@dataclass(frozen=True, kw_only=True)
class Trace:
    record_id: str
    events: tuple[TracedEvent, ...]  # the record's and its ancestors' events, in time order
    chains: tuple[ChainStatus, ...]  # every chain those events are in
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

    stored: StoredEvent  # the `delivered` event
    why: tuple[Reason, ...]  # rules `origin_not_production`, `failed_validation`

    def to_dict(self) -> dict[str, Any]:
        return {**self.stored.to_dict(), "why": [reason.to_dict() for reason in self.why]}


@dataclass(frozen=True, kw_only=True)
class LeakReport:
    since: datetime | None
    until: datetime | None
    production_destinations: frozenset[str] | None  # None: every delivery counts
    leaks: tuple[Leak, ...]  # real leaks, in time order: none while the guard works
    blocked: tuple[StoredEvent, ...]  # leak attempts the guard blocked, in time order

    def to_dict(self) -> dict[str, Any]:
        destinations = self.production_destinations
        return {
            "since": format_time(self.since) if self.since is not None else None,
            "until": format_time(self.until) if self.until is not None else None,
            "production_destinations": sorted(destinations) if destinations is not None else None,
            "leaks": [leak.to_dict() for leak in self.leaks],
            "blocked": [stored.to_dict() for stored in self.blocked],
        }


def trace(store: LineageStore, record_id: str, *, verify_chains: bool = True) -> Trace:
    """Every event of `record_id` and of its ancestors (cycle-safe), with each chain's status.

    With `verify_chains`, each chain the events are in is walked in full: on long chains that
    takes a while (about a second per 100,000 events); without, statuses are `unverified`.
    """
    depth_of: dict[str, int] = {record_id: 0}
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

    statuses: dict[str, ChainStatus] = {}
    for chain_id in sorted({stored.chain_id for stored in found}):
        if verify_chains:
            result = store.verify(chain_id)
            statuses[chain_id] = ChainStatus(
                chain_id=chain_id, verified=True, events=result.events, broken=result.broken
            )
        else:
            statuses[chain_id] = ChainStatus(
                chain_id=chain_id, verified=False, events=0, broken=None
            )
    traced = [
        TracedEvent(
            stored=stored,
            depth=depth_of[str(stored.event.record_id)],
            chain=statuses[stored.chain_id],
        )
        for stored in sorted(found, key=order_key)
    ]
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
) -> LeakReport:
    """Real leaks and blocked leak attempts with `since <= at < until`.

    A real leak is a `delivered` event to a production destination (any destination when
    `production_destinations` is None: under the production policy the guard's allowed topic
    is the production sink) of a record whose `origin_env` is not PRODUCTION, or whose
    validation failed for the same source message (topic, partition, offset). A blocked attempt
    is an `enforce` event decided `blocked` with a `leak_…` reason or a non-PRODUCTION origin.
    """
    destinations = None if production_destinations is None else frozenset(production_destinations)
    found: list[Leak] = []
    pending: list[StoredEvent] = []
    for stored in store.events(since=since, until=until, decision=Decision.DELIVERED):
        if destinations is not None and stored.event.destination not in destinations:
            continue
        pending.append(stored)
        if len(pending) >= CHECK_CHUNK:
            found.extend(_leaks_among(store, pending))
            pending = []
    found.extend(_leaks_among(store, pending))

    blocked = [
        stored
        for stored in store.events(
            since=since, until=until, stage=Stage.ENFORCE, decision=Decision.BLOCKED
        )
        if stored.event.origin_env != PRODUCTION
        or any(reason.rule.startswith(LEAK_RULE_PREFIX) for reason in stored.event.reasons)
    ]
    return LeakReport(
        since=since,
        until=until,
        production_destinations=destinations,
        leaks=tuple(found),
        blocked=tuple(blocked),
    )


def verify(store: LineageStore) -> BrokenLink | None:
    """The first broken link of any chain in `store`, or None when every chain is intact."""
    return store.verify().broken


def _leaks_among(store: LineageStore, delivered: list[StoredEvent]) -> Iterable[Leak]:
    """The leaks among `delivered` production deliveries."""
    ids = {stored.event.record_id for stored in delivered if stored.event.record_id is not None}
    failed: dict[tuple[str | None, str, int, int], list[str]] = defaultdict(list)
    not_passed = [decision for decision in Decision if decision is not Decision.PASSED]
    for stored in store.trace_many(ids, stage=Stage.VALIDATE, decisions=not_passed) if ids else ():
        rules = [reason.rule for reason in stored.event.reasons]
        failed[_message_of(stored)].extend(rules or [str(stored.event.decision)])
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
        if failed_rules := failed.get(_message_of(stored)):
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


def _message_of(stored: StoredEvent) -> tuple[str | None, str, int, int]:
    """The source message an event is about: the same for every stage it passed."""
    event = stored.event
    return (event.record_id, event.source_topic, event.source_partition, event.source_offset)
