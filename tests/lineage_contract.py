"""The contract every `LineageStore` keeps: one suite, run against each implementation.

A test module imports these tests (`from tests.lineage_contract import *`) and provides
three fixtures:

- `store`: an empty, open `LineageStore` of its own;
- `store_url`: the URL that opens the same store again (`open_store(store_url)`);
- `run_sql`: runs one SQL statement directly on that database, outside lineage-guard (how an
  intruder would edit the evidence), and returns the rows it produced.

Tamper tests edit the tables `lineage_events` and `lineage_chains` with plain SQL that both
SQLite and PostgreSQL accept.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from lineage_guard.lineage import queries
from lineage_guard.lineage.chain import BreakKind
from lineage_guard.lineage.errors import ServiceUnavailableError
from lineage_guard.lineage.events import (
    GENESIS_HASH,
    Decision,
    LineageEvent,
    Reason,
    Stage,
    StoredEvent,
    event_hash,
)
from lineage_guard.lineage.store import LineageStore, open_store

RunSql = Callable[[str], list[tuple[Any, ...]]]

__all__ = [
    "test_a_failing_batch_leaves_nothing",
    "test_an_unreadable_edit_breaks_the_chain_at_that_event",
    "test_append_continues_the_chain_across_batches_and_reopening",
    "test_append_then_trace_round_trips_every_field",
    "test_chains_lists_every_chain",
    "test_concurrent_appends_never_fork_a_chain",
    "test_content_classes_gives_the_highest_class_recorded_per_id",
    "test_deleting_a_chain_head_is_detected",
    "test_deleting_an_event_in_the_middle_is_detected",
    "test_deleting_the_last_event_is_detected",
    "test_editing_one_column_breaks_the_chain_at_that_event",
    "test_events_filters_by_time_stage_and_decision",
    "test_events_streams_one_snapshot_while_appends_go_on",
    "test_inserting_a_forged_event_at_the_end_is_detected",
    "test_inserting_a_well_hashed_forged_event_in_the_middle_is_detected",
    "test_leaks_found_when_test_data_or_invalid_records_reached_production",
    "test_leaks_none_when_the_guard_blocked_the_attempts",
    "test_trace_follows_ancestors_through_a_cycle",
    "test_trace_many_filters_by_stage_and_decisions",
    "test_trace_of_an_unknown_record_is_empty",
    "test_trace_orders_by_time_then_stage",
    "test_trace_shows_the_chain_status_of_each_event",
    "test_verify_clean_store",
]

T0 = datetime(2026, 11, 27, 12, 0, 0, 123000, tzinfo=UTC)
PIPELINE = "crm-guard"
RUN = "run-7f3a"
TOPIC = "crm.contacts"
CHAIN = f"{RUN}/{TOPIC}/0"
OTHER_CHAIN = f"{RUN}/{TOPIC}/1"
ALLOWED = "crm.contacts.prod"
QUARANTINE = "crm.contacts.quarantine"


def event(
    record_id: str | None,
    stage: Stage,
    decision: Decision = Decision.PASSED,
    *,
    at: datetime = T0,
    offset: int = 0,
    partition: int = 0,
    **fields: Any,
) -> LineageEvent:
    values: dict[str, Any] = {
        "record_id": record_id,
        "stage": stage,
        "pipeline": PIPELINE,
        "run_id": RUN,
        "at": at,
        "decision": decision,
        "content_class": "SYNTHETIC",
        "origin_env": "PRODUCTION",
        "tenant_id": "acme",
        "source_system": "outreach-assistant",
        "generator": "email-assistant/gpt-4o@2024-08-06",
        "source_topic": TOPIC,
        "source_partition": partition,
        "source_offset": offset,
    }
    values.update(fields)
    return LineageEvent(**values)


def journey(
    record_id: str,
    *,
    offset: int,
    at: datetime = T0,
    final: Decision = Decision.DELIVERED,
    **fields: Any,
) -> list[LineageEvent]:
    """A record's five stages, 1 ms apart; the write stage decides `final`."""
    events = []
    for index, stage in enumerate(Stage):
        decision = final if stage is Stage.WRITE else Decision.PASSED
        destination = None
        if stage is Stage.WRITE:
            destination = ALLOWED if final is Decision.DELIVERED else QUARANTINE
        events.append(
            event(
                record_id,
                stage,
                decision,
                at=at + timedelta(milliseconds=index),
                offset=offset,
                destination=destination,
                **fields,
            )
        )
    return events


def chain_events(store: LineageStore, chain_id: str) -> list[StoredEvent]:
    return sorted(
        (stored for stored in store.events() if stored.chain_id == chain_id),
        key=lambda stored: stored.seq,
    )


def filled(store: LineageStore) -> list[StoredEvent]:
    """Chain CHAIN holds 6 events of records r0..r5 (seq 1..6); OTHER_CHAIN holds 3."""
    store.append(
        [event(f"r{i}", Stage.SOURCE, offset=i, at=T0 + timedelta(seconds=i)) for i in range(6)],
        chain_id=CHAIN,
    )
    store.append(
        [event(f"o{i}", Stage.SOURCE, offset=i, partition=1) for i in range(3)],
        chain_id=OTHER_CHAIN,
    )
    stored = chain_events(store, CHAIN)
    assert [s.seq for s in stored] == [1, 2, 3, 4, 5, 6]
    assert store.verify().ok
    return stored


# -- append, trace, order -------------------------------------------------------------------


def test_append_then_trace_round_trips_every_field(store: LineageStore) -> None:
    full = LineageEvent(
        record_id="3f2b8a1e-9c4d-4e5f-8a7b-1c2d3e4f5a6b",
        stage=Stage.ENFORCE,
        pipeline=PIPELINE,
        run_id=RUN,
        at=datetime(2026, 11, 27, 13, 0, 0, 456789, tzinfo=timezone(timedelta(hours=2))),
        decision=Decision.BLOCKED,
        reasons=(
            Reason(rule="leak_test_origin", message="Record from `TEST` may not reach prod."),
            Reason(rule="tenant_mismatch", message="Tenant `globex` ≠ sink tenant `acme`."),
        ),
        content_class="SYNTHETIC",
        origin_env="TEST",
        tenant_id="globex",
        source_system="faker-seed «test»",
        generator="profile-faker@3.1",
        parent_record_ids=("p-1", "p-2"),
        source_topic=TOPIC,
        source_partition=3,
        source_offset=9_000_000_001,
        destination=None,
    )
    sparse = LineageEvent(
        record_id="3f2b8a1e-9c4d-4e5f-8a7b-1c2d3e4f5a6b",
        stage=Stage.WRITE,
        pipeline=PIPELINE,
        run_id=RUN,
        at=datetime(2026, 11, 27, 10, 59, 59, tzinfo=UTC),
        decision=Decision.QUARANTINED,
        source_topic=TOPIC,
        source_partition=3,
        source_offset=9_000_000_001,
        destination=QUARANTINE,
    )
    undecodable = event(None, Stage.DECODE, Decision.QUARANTINED, offset=17, content_class=None)
    store.append([full, sparse, undecodable], chain_id=CHAIN)

    traced = store.trace("3f2b8a1e-9c4d-4e5f-8a7b-1c2d3e4f5a6b")

    assert [stored.event for stored in traced] == [sparse, full]  # time order
    assert full.at == datetime(2026, 11, 27, 11, 0, 0, 456000, tzinfo=UTC)  # UTC, to the ms
    assert traced[1].event.reasons == full.reasons
    assert traced[1].event.parent_record_ids == ("p-1", "p-2")
    assert [(stored.chain_id, stored.seq) for stored in traced] == [(CHAIN, 2), (CHAIN, 1)]
    first, second = traced[1], traced[0]
    assert first.prev_hash == GENESIS_HASH
    assert first.hash == event_hash(full, chain_id=CHAIN, seq=1, prev_hash=GENESIS_HASH)
    assert second.prev_hash == first.hash
    assert second.hash == event_hash(sparse, chain_id=CHAIN, seq=2, prev_hash=first.hash)
    [stored_undecodable] = [s for s in store.events() if s.event.record_id is None]
    assert stored_undecodable.event == undecodable
    assert stored_undecodable.seq == 3
    head = store.head(CHAIN)
    assert head is not None
    assert (head.seq, head.hash) == (3, stored_undecodable.hash)


def test_trace_orders_by_time_then_stage(store: LineageStore) -> None:
    same_ms = T0
    # Appended out of order, over two chains and three batches.
    store.append([event("r", Stage.WRITE, Decision.DELIVERED, at=same_ms)], chain_id=CHAIN)
    store.append(
        [
            event("r", Stage.VALIDATE, at=same_ms, partition=1),
            event("r", Stage.SOURCE, at=same_ms - timedelta(milliseconds=5), partition=1),
        ],
        chain_id=OTHER_CHAIN,
    )
    store.append(
        [event("r", Stage.ENFORCE, at=same_ms), event("r", Stage.DECODE, at=same_ms)],
        chain_id=CHAIN,
    )

    traced = store.trace("r")

    assert [stored.event.stage for stored in traced] == list(Stage)
    assert [(stored.chain_id, stored.seq) for stored in traced] == [
        (OTHER_CHAIN, 2),
        (CHAIN, 3),
        (OTHER_CHAIN, 1),
        (CHAIN, 2),
        (CHAIN, 1),
    ]


def test_append_continues_the_chain_across_batches_and_reopening(
    store: LineageStore, store_url: str
) -> None:
    store.append(journey("a", offset=0), chain_id=CHAIN)
    store.close()
    with open_store(store_url) as reopened:
        reopened.append(journey("b", offset=1, at=T0 + timedelta(seconds=1)), chain_id=CHAIN)
        stored = chain_events(reopened, CHAIN)
        assert [s.seq for s in stored] == list(range(1, 11))
        assert [s.event.record_id for s in stored] == ["a"] * 5 + ["b"] * 5
        assert all(s.prev_hash == p.hash for p, s in itertools.pairwise(stored))
        head = reopened.head(CHAIN)
        assert head is not None
        assert (head.seq, head.hash) == (10, stored[-1].hash)
        assert reopened.verify().ok


def test_a_failing_batch_leaves_nothing(store: LineageStore, run_sql: RunSql) -> None:
    store.append([event("kept-1", Stage.SOURCE), event("kept-2", Stage.SOURCE)], chain_id=CHAIN)
    head_before = store.head(CHAIN)
    # A row already at seq 5 makes the database refuse the batch's third event (seq 5).
    run_sql(
        "INSERT INTO lineage_events SELECT chain_id, 5, 'squatter', stage, pipeline, run_id, at,"
        " decision, reasons, content_class, origin_env, tenant_id, source_system, generator,"
        " parent_record_ids, source_topic, source_partition, source_offset, destination,"
        f" prev_hash, hash FROM lineage_events WHERE chain_id = '{CHAIN}' AND seq = 1"
    )
    batch = [event(f"lost-{i}", Stage.SOURCE, offset=i) for i in range(4)]

    with pytest.raises(ServiceUnavailableError) as raised:
        store.append(batch, chain_id=CHAIN)

    assert f"`{store.url}`" in raised.value.message
    assert "Nothing of this batch was written" in raised.value.message
    assert all(store.trace(f"lost-{i}") == [] for i in range(4))
    assert store.head(CHAIN) == head_before
    assert run_sql(f"SELECT count(*) FROM lineage_events WHERE chain_id = '{CHAIN}'") == [(3,)]
    # The store is still usable for other chains.
    store.append([event("next", Stage.SOURCE, partition=1)], chain_id=OTHER_CHAIN)
    assert [s.seq for s in store.trace("next")] == [1]


def test_concurrent_appends_never_fork_a_chain(store: LineageStore, store_url: str) -> None:
    writers, batches, size = 4, 10, 25
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            with open_store(store_url) as own:
                for batch in range(batches):
                    own.append(
                        [
                            event(f"w{writer}-{batch}-{i}", Stage.SOURCE, offset=i)
                            for i in range(size)
                        ],
                        chain_id=CHAIN,
                    )
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    stored = chain_events(store, CHAIN)
    assert [s.seq for s in stored] == list(range(1, writers * batches * size + 1))
    # Each batch stays contiguous: a writer's batch is never interleaved with another's.
    for start in range(0, len(stored), size):
        batch_ids = {
            (s.event.record_id or "").rsplit("-", 1)[0] for s in stored[start : start + size]
        }
        assert len(batch_ids) == 1
    assert store.verify() == store.verify(CHAIN)
    assert store.verify().ok
    assert store.verify().events == writers * batches * size


def test_trace_many_filters_by_stage_and_decisions(store: LineageStore) -> None:
    invalid = journey("bad", offset=1, at=T0 + timedelta(seconds=1), final=Decision.QUARANTINED)
    invalid[2] = dataclasses.replace(invalid[2], decision=Decision.QUARANTINED)
    store.append(
        [*journey("good", offset=0), *invalid, *journey("other", offset=2)], chain_id=CHAIN
    )
    ids = ["good", "bad", "missing"]

    every = store.trace_many(ids)
    validations = store.trace_many(ids, stage=Stage.VALIDATE)
    failed = store.trace_many(
        ids, stage=Stage.VALIDATE, decisions=[Decision.QUARANTINED, Decision.BLOCKED]
    )

    assert [(s.event.record_id, s.event.stage) for s in every] == [
        *(("good", stage) for stage in Stage),
        *(("bad", stage) for stage in Stage),
    ]
    assert [s.event.record_id for s in validations] == ["good", "bad"]
    assert [(s.event.record_id, s.seq) for s in failed] == [("bad", 8)]
    assert [s.event.stage for s in store.trace_many(ids, decisions=[Decision.QUARANTINED])] == [
        Stage.VALIDATE,
        Stage.WRITE,
    ]
    assert store.trace_many(ids, decisions=[]) == []
    assert store.trace_many([]) == []


def test_content_classes_gives_the_highest_class_recorded_per_id(store: LineageStore) -> None:
    store.append(
        [
            *journey("a", offset=0, content_class="HUMAN"),
            *journey("b", offset=1, content_class="AI_ASSISTED"),
            *journey("c", offset=2, content_class=None),
        ],
        chain_id=CHAIN,
    )
    # a later pass records `a` again, as SYNTHETIC, and `b` as HUMAN: the highest class wins
    store.append(
        [
            *journey("a", offset=3, content_class="SYNTHETIC"),
            *journey("b", offset=4, content_class="HUMAN"),
        ],
        chain_id=OTHER_CHAIN,
    )
    many = [f"missing-{n}" for n in range(1200)]  # more ids than one IN (…) / ANY chunk

    assert store.content_classes(["a", "b", "c", "d", *many]) == {
        "a": "SYNTHETIC",
        "b": "AI_ASSISTED",
    }
    assert store.content_classes([]) == {}


def test_trace_of_an_unknown_record_is_empty(store: LineageStore) -> None:
    store.append(journey("known", offset=0), chain_id=CHAIN)
    assert store.trace("unknown") == []
    result = queries.trace(store, "unknown")
    assert not result.found
    assert result.events == ()
    assert result.chains == ()


# -- ancestry and chain status ---------------------------------------------------------------


def test_trace_follows_ancestors_through_a_cycle(store: LineageStore) -> None:
    # child <- parent <- grandparent <- child (a cycle), and parent also names a missing record.
    store.append(
        journey("grandparent", offset=0, parent_record_ids=("child",))
        + journey("parent", offset=1, parent_record_ids=("grandparent", "never-seen"))
        + journey("child", offset=2, parent_record_ids=("parent",))
        + journey("stranger", offset=3),
        chain_id=CHAIN,
    )

    result = queries.trace(store, "child")

    assert result.found
    depths = {(t.stored.event.record_id, t.depth) for t in result.events}
    assert depths == {("child", 0), ("parent", 1), ("grandparent", 2)}
    assert len(result.events) == 15
    assert result.missing_ancestors == ("never-seen",)
    ats = [t.stored.event.at for t in result.events]
    assert ats == sorted(ats)
    assert [chain.chain_id for chain in result.chains] == [CHAIN]
    assert result.chains[0].ok
    assert result.chains[0].events == 20
    assert result.intact


def test_trace_shows_the_chain_status_of_each_event(store: LineageStore, run_sql: RunSql) -> None:
    store.append(journey("p", offset=0), chain_id=OTHER_CHAIN)
    store.append(journey("c", offset=1, parent_record_ids=("p",)), chain_id=CHAIN)
    run_sql(f"UPDATE lineage_events SET decision = 'passed' WHERE chain_id = '{CHAIN}' AND seq = 5")

    result = queries.trace(store, "c")

    status = {t.stored.event.record_id: t.chain.status for t in result.events}
    assert status == {"c": "broken", "p": "ok"}
    broken = {chain.chain_id: chain.broken for chain in result.chains}
    assert broken[OTHER_CHAIN] is None
    link = broken[CHAIN]
    assert link is not None
    assert (link.seq, link.record_id, link.kind) == (5, "c", BreakKind.EDITED)
    assert not result.intact
    quick = queries.trace(store, "c", verify_chains=False)
    assert {t.chain.status for t in quick.events} == {"unverified"}
    assert [t.stored for t in quick.events] == [t.stored for t in result.events]


# -- streaming and chains --------------------------------------------------------------------


def test_events_filters_by_time_stage_and_decision(store: LineageStore) -> None:
    times = [T0 + timedelta(minutes=m) for m in range(5)]
    store.append(
        [
            event("a", Stage.SOURCE, at=times[3]),
            event("b", Stage.ENFORCE, Decision.BLOCKED, at=times[1]),
            event("c", Stage.ENFORCE, Decision.PASSED, at=times[2]),
            event("d", Stage.SOURCE, at=times[0]),
        ],
        chain_id=CHAIN,
    )
    store.append([event("e", Stage.ENFORCE, Decision.BLOCKED, at=times[4])], chain_id=OTHER_CHAIN)

    def ids(**filters: Any) -> list[str | None]:
        return [stored.event.record_id for stored in store.events(**filters)]

    assert ids() == ["d", "b", "c", "a", "e"]
    assert ids(since=times[1], until=times[3]) == ["b", "c"]  # since inclusive, until exclusive
    assert ids(since=times[3]) == ["a", "e"]
    assert ids(until=times[1]) == ["d"]
    assert ids(since=times[1] + timedelta(milliseconds=1), until=times[2]) == []
    assert ids(stage=Stage.ENFORCE) == ["b", "c", "e"]
    assert ids(stage=Stage.ENFORCE, decision=Decision.BLOCKED, until=times[4]) == ["b"]
    assert ids(decision=Decision.DELIVERED) == []


def test_events_streams_one_snapshot_while_appends_go_on(store: LineageStore) -> None:
    count = 12_000  # more than one fetch of rows
    store.append(
        [
            event(f"r{i}", Stage.SOURCE, offset=i, at=T0 + timedelta(milliseconds=i))
            for i in range(count)
        ],
        chain_id=CHAIN,
    )
    stream = store.events()
    first = next(stream)
    # Appending while a stream is open neither blocks nor shows up in that stream.
    store.append([event("late", Stage.SOURCE, partition=1)], chain_id=OTHER_CHAIN)
    rest = list(stream)
    assert [first.event.record_id, *(s.event.record_id for s in rest)] == [
        f"r{i}" for i in range(count)
    ]
    assert [s.event.record_id for s in store.events(stage=Stage.SOURCE)][-1] == f"r{count - 1}"
    assert [s.chain_id for s in store.trace("late")] == [OTHER_CHAIN]


def test_chains_lists_every_chain(store: LineageStore) -> None:
    assert list(store.chains()) == []
    store.append([], chain_id=CHAIN)
    assert store.head(CHAIN) is None
    store.append([event("a", Stage.SOURCE)], chain_id=CHAIN)
    store.append([event("b", Stage.SOURCE, partition=1)], chain_id=OTHER_CHAIN)
    store.append([event("c", Stage.SOURCE)], chain_id="run-0/crm.emails/4")
    assert sorted(store.chains()) == sorted([CHAIN, OTHER_CHAIN, "run-0/crm.emails/4"])


# -- leaks -----------------------------------------------------------------------------------


def test_leaks_none_when_the_guard_blocked_the_attempts(store: LineageStore) -> None:
    def blocked_at_enforce(record_id: str, offset: int, reason: Reason, **fields: Any) -> list:
        stopped = event(
            record_id,
            Stage.ENFORCE,
            Decision.BLOCKED,
            at=T0 + timedelta(milliseconds=3),
            offset=offset,
            reasons=(reason,),
            **fields,
        )
        return [*journey(record_id, offset=offset, **fields)[:3], stopped]

    leak = Reason(rule="leak_test_origin", message="`TEST` may not reach production.")
    tenant = Reason(rule="tenant_mismatch", message="Tenant `globex` is not `acme`.")
    blocked_test = blocked_at_enforce("test-profile", 1, leak, origin_env="TEST")
    blocked_tenant = blocked_at_enforce("other-tenant", 2, tenant, tenant_id="globex")
    store.append(
        [*journey("prod", offset=0), *blocked_test, *blocked_tenant],
        chain_id=CHAIN,
    )

    report = queries.leaks(store)

    assert report.leaks == ()
    assert [stored.event.record_id for stored in report.blocked] == ["test-profile"]
    assert report.blocked[0].event.stage is Stage.ENFORCE


def test_leaks_found_when_test_data_or_invalid_records_reached_production(
    store: LineageStore,
) -> None:
    later = T0 + timedelta(hours=1)
    invalid = journey("stripped", offset=2)
    invalid[2] = dataclasses.replace(
        invalid[2],
        decision=Decision.QUARANTINED,
        reasons=(Reason(rule="generator_required", message="No generator."),),
    )
    store.append(
        journey("prod", offset=0)
        + journey("staging-leak", offset=1, origin_env="STAGING")
        + invalid
        + journey("sandbox", offset=3, origin_env="TEST", final=Decision.DELIVERED)
        + journey("late-leak", offset=4, origin_env="TEST", at=later),
        chain_id=CHAIN,
    )
    # `sandbox` went to a non-production destination.
    store.append(
        [
            dataclasses.replace(e, destination="crm.contacts.sandbox") if e.destination else e
            for e in journey("sandbox-2", offset=5, origin_env="TEST")
        ],
        chain_id=OTHER_CHAIN,
    )

    everything = queries.leaks(store)
    window = queries.leaks(store, until=later)
    scoped = queries.leaks(store, production_destinations={ALLOWED}, until=later)

    assert [leak.stored.event.record_id for leak in everything.leaks] == [
        "staging-leak",
        "stripped",
        "sandbox",
        "sandbox-2",  # same time, next chain
        "late-leak",
    ]
    assert [leak.stored.event.record_id for leak in window.leaks] == [
        "staging-leak",
        "stripped",
        "sandbox",
        "sandbox-2",
    ]
    assert [leak.stored.event.record_id for leak in scoped.leaks] == [
        "staging-leak",
        "stripped",
        "sandbox",
    ]
    why = {leak.stored.event.record_id: [r.rule for r in leak.why] for leak in scoped.leaks}
    assert why == {
        "staging-leak": ["origin_not_production"],
        "stripped": ["failed_validation"],
        "sandbox": ["origin_not_production"],
    }
    stripped = next(leak for leak in scoped.leaks if leak.stored.event.record_id == "stripped")
    assert "generator_required" in stripped.why[0].message
    assert all(leak.stored.event.decision is Decision.DELIVERED for leak in everything.leaks)
    assert everything.blocked == ()


# -- verify and tampering --------------------------------------------------------------------


def test_verify_clean_store(store: LineageStore) -> None:
    empty = store.verify()
    assert (empty.ok, empty.chains, empty.events) == (True, 0, 0)
    filled(store)
    result = store.verify()
    assert (result.ok, result.chains, result.events, result.broken) == (True, 2, 9, None)
    assert queries.verify(store) is None
    single = store.verify(OTHER_CHAIN)
    assert (single.ok, single.chains, single.events) == (True, 1, 3)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("decision", "'delivered'"),
        ("origin_env", "'TEST'"),
        ("record_id", "'r9'"),
        ("at", "'2020-01-01T00:00:00.000Z'"),
        ("reasons", """'[{"message": "ok", "rule": "all_good"}]'"""),
        ("destination", "'crm.contacts.prod'"),
        ("source_offset", "41"),
        ("hash", "'" + "f" * 64 + "'"),
    ],
)
def test_editing_one_column_breaks_the_chain_at_that_event(
    store: LineageStore, run_sql: RunSql, column: str, value: str
) -> None:
    filled(store)
    run_sql(f"UPDATE lineage_events SET {column} = {value} WHERE chain_id = '{CHAIN}' AND seq = 3")

    broken = queries.verify(store)

    assert broken is not None
    record = "r9" if column == "record_id" else "r2"  # the record id as the row now reads
    assert (broken.chain_id, broken.seq, broken.record_id) == (CHAIN, 3, record)
    assert broken.kind is BreakKind.EDITED
    assert broken.description == (
        f"chain `{CHAIN}` seq 3 (record `{record}`) does not match its hash: the event was"
        " edited after it was written"
    )
    assert "\n" not in broken.description
    assert store.verify(OTHER_CHAIN).ok


def test_an_unreadable_edit_breaks_the_chain_at_that_event(
    store: LineageStore, run_sql: RunSql
) -> None:
    filled(store)
    run_sql(f"UPDATE lineage_events SET stage = 'teleport' WHERE chain_id = '{CHAIN}' AND seq = 4")

    broken = queries.verify(store)

    assert broken is not None
    assert (broken.chain_id, broken.seq, broken.record_id) == (CHAIN, 4, "r3")
    assert broken.kind is BreakKind.UNREADABLE
    assert "teleport" in broken.description


def test_deleting_an_event_in_the_middle_is_detected(store: LineageStore, run_sql: RunSql) -> None:
    filled(store)
    run_sql(f"DELETE FROM lineage_events WHERE chain_id = '{CHAIN}' AND seq = 3")

    broken = queries.verify(store)

    assert broken is not None
    assert (broken.chain_id, broken.seq, broken.kind) == (CHAIN, 3, BreakKind.DELETED)
    assert broken.description == (
        f"chain `{CHAIN}` seq 3 is missing: the chain jumps from seq 2 (record `r1`) to seq 4"
        " (record `r3`); deleted"
    )


def test_deleting_the_last_event_is_detected(store: LineageStore, run_sql: RunSql) -> None:
    filled(store)
    run_sql(f"DELETE FROM lineage_events WHERE chain_id = '{CHAIN}' AND seq = 6")

    broken = queries.verify(store)

    assert broken is not None
    assert (broken.chain_id, broken.seq, broken.kind) == (CHAIN, 6, BreakKind.DELETED)
    assert broken.description == (
        f"chain `{CHAIN}` seq 6 is missing: the chain's head records seq 6 but its last event"
        " is seq 5 (record `r4`); deleted"
    )


def test_inserting_a_forged_event_at_the_end_is_detected(
    store: LineageStore, run_sql: RunSql
) -> None:
    stored = filled(store)
    run_sql(
        "INSERT INTO lineage_events SELECT chain_id, 7, 'forged', stage, pipeline, run_id, at,"
        " 'delivered', reasons, content_class, origin_env, tenant_id, source_system, generator,"
        " parent_record_ids, source_topic, source_partition, source_offset, destination,"
        f" '{stored[5].hash}', '{'a' * 64}'"
        f" FROM lineage_events WHERE chain_id = '{CHAIN}' AND seq = 6"
    )

    broken = queries.verify(store)

    assert broken is not None
    assert (broken.chain_id, broken.seq, broken.record_id) == (CHAIN, 7, "forged")
    assert broken.kind is BreakKind.INSERTED
    assert broken.description.startswith(
        f"chain `{CHAIN}` seq 7 (record `forged`) lies beyond the chain's recorded head (seq 6)"
    )


def test_inserting_a_well_hashed_forged_event_in_the_middle_is_detected(
    store: LineageStore, run_sql: RunSql
) -> None:
    stored = filled(store)
    # The intruder knows the scheme: the forged event links to seq 2 and carries a correct hash.
    forged = dataclasses.replace(stored[2].event, record_id="forged")
    forged_hash = event_hash(forged, chain_id=CHAIN, seq=3, prev_hash=stored[1].hash)
    run_sql(f"UPDATE lineage_events SET seq = seq + 1000 WHERE chain_id = '{CHAIN}' AND seq >= 3")
    run_sql(f"UPDATE lineage_events SET seq = seq - 999 WHERE chain_id = '{CHAIN}' AND seq > 1000")
    run_sql(
        "INSERT INTO lineage_events SELECT chain_id, 3, 'forged', stage, pipeline, run_id, at,"
        " decision, reasons, content_class, origin_env, tenant_id, source_system, generator,"
        " parent_record_ids, source_topic, source_partition, source_offset, destination,"
        f" '{stored[1].hash}', '{forged_hash}'"
        f" FROM lineage_events WHERE chain_id = '{CHAIN}' AND seq = 4"
    )

    broken = queries.verify(store)

    assert broken is not None
    assert (broken.chain_id, broken.seq, broken.record_id) == (CHAIN, 4, "r2")
    assert broken.kind is BreakKind.RELINKED
    assert broken.description.startswith(
        f"chain `{CHAIN}` seq 4 (record `r2`) does not link to seq 3 (record `forged`)"
    )


def test_deleting_a_chain_head_is_detected(store: LineageStore, run_sql: RunSql) -> None:
    filled(store)
    run_sql(f"DELETE FROM lineage_chains WHERE chain_id = '{OTHER_CHAIN}'")

    broken = queries.verify(store)

    assert broken is not None
    assert (broken.chain_id, broken.seq, broken.record_id) == (OTHER_CHAIN, 3, "o2")
    assert broken.kind is BreakKind.HEAD
    assert "no recorded head" in broken.description
    assert OTHER_CHAIN in list(store.chains())
