"""`lineage leaks` as it was before the store found its candidates in SQL: every delivered and
blocked hop streamed through Python (`LineageStore.scan`), each delivery's validation looked up
by record id. Kept as the slow reference `queries.leaks` is proven equal to on hostile stores
(`tests.lineage_contract`); the product never calls it."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from lineage_guard.lineage.events import Decision, Stage, StoredEvent
from lineage_guard.lineage.hops import Delivery, Outcome, is_handoff
from lineage_guard.lineage.queries import (
    LEAK_RULE_PREFIX,
    PRODUCTION,
    Leak,
    LeakReport,
    _leaks_among,
)
from lineage_guard.lineage.store import LineageStore


def scanned_leaks(
    store: LineageStore,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    production_destinations: Collection[str] | None = None,
) -> LeakReport:
    destinations = None if production_destinations is None else frozenset(production_destinations)
    delivered: list[StoredEvent] = []
    for hop in store.scan(since=since, until=until, outcome=Outcome.DELIVERED):
        if destinations is not None and hop.destination not in destinations:
            continue
        if is_handoff(hop.destination) or hop.delivery is Delivery.FAILED:
            continue
        delivered.append(hop.events()[-1])
    confirmed: dict[tuple[Any, ...], Leak] = {}
    unconfirmed: dict[tuple[Any, ...], Leak] = {}
    for leak in _leaks_among(store, delivered):
        event = leak.stored.event
        key = (event.record_id, leak.stored.digest, event.destination)
        if event.decision is Decision.DELIVERED:
            confirmed.setdefault(key, leak)
        else:
            unconfirmed.setdefault(key, leak)
    blocked = [
        stored
        for hop in store.scan(since=since, until=until, outcome=Outcome.BLOCKED)
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
        blocked=tuple(blocked),
    )
