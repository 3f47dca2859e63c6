"""The contract every `LineageStore` keeps: one suite, run against each implementation.

A test module imports these tests (`from tests.lineage_contract import *`) and provides
three fixtures:

- `store`: an empty, open `LineageStore` of its own;
- `store_url`: the URL that opens the same store again (`open_store(store_url)`);
- `run_sql`: runs one SQL statement directly on that database, outside lineage-guard (how an
  intruder would edit the evidence), and returns the rows it produced.

Tamper tests edit `lineage_hops`, `lineage_entries`, `lineage_chains` and
`lineage_checkpoints` with plain SQL that both SQLite and PostgreSQL accept; the intruder who
recomputes hashes uses the same public hashing code an attacker could read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lineage_guard.lineage import queries
from lineage_guard.lineage.bounds import ID_LIMIT, stored_id
from lineage_guard.lineage.chain import BreakKind, Failure
from lineage_guard.lineage.checkpoints import Checkpoint, key_id, latest, sign, signed_bytes
from lineage_guard.lineage.events import Decision, Reason, Stage
from lineage_guard.lineage.hops import Delivery, Hop, HopBatch, Outcome, merkle_root
from lineage_guard.lineage.store import LeakCheck, LineageStore, RunCount, open_store
from lineage_guard.lineage.stores.sql import (
    ENTRY_COLUMNS,
    HOP_COLUMNS,
    Admission,
    read_entry,
    read_hop,
)
from tests.reference_leaks import scanned_leaks

RunSql = Callable[[str], list[tuple[Any, ...]]]

__all__ = [
    "test_a_batch_is_one_transaction",
    "test_a_retried_batch_is_recorded_once",
    "test_a_store_rewritten_after_a_blocked_hop_fails_against_the_held_checkpoint",
    "test_a_store_rolled_back_by_a_run_fails_against_the_held_checkpoint",
    "test_a_store_written_before_the_summary_gets_it_counted_from_its_hops_once",
    "test_admitted_requests_chain_as_if_appended_and_confirmed_one_by_one",
    "test_append_then_trace_round_trips_every_field",
    "test_chains_continue_across_runs_and_reopening",
    "test_checkpoints_are_chained_and_a_deleted_middle_one_is_seen",
    "test_checkpoints_written_before_chaining_still_verify_and_start_the_chain",
    "test_concurrent_appends_never_fork_a_chain",
    "test_content_classes_gives_the_highest_recorded_class",
    "test_deleting_a_hop_row_is_detected",
    "test_deleting_a_whole_batch_is_detected",
    "test_deleting_a_whole_chain_is_detected_only_with_a_key",
    "test_deleting_checkpoints_fails_a_verify_with_a_key",
    "test_deleting_the_tail_and_rewinding_the_head_is_detected_only_with_a_key",
    "test_deleting_the_tail_is_detected",
    "test_deliveries_show_sending_until_confirmed_and_failures_as_failed",
    "test_editing_a_batch_header_is_detected",
    "test_editing_a_hop_row_is_detected_with_and_without_a_key",
    "test_events_and_scan_filter_by_time_stage_and_decision",
    "test_forged_checkpoint_is_detected",
    "test_inserting_a_hop_row_is_detected",
    "test_leak_counts_are_kept_with_their_time_and_per_tenant",
    "test_leaks_count_only_acknowledged_deliveries_and_dedupe_redeliveries",
    "test_leaks_found_in_sql_equal_the_scan_of_every_hop_on_a_hostile_store",
    "test_leaks_none_when_the_guard_blocked_the_attempts",
    "test_long_ids_are_kept_bounded_and_found_by_their_full_value",
    "test_recomputed_chain_is_detected_only_with_a_key",
    "test_run_counts_count_one_runs_hops_per_decision",
    "test_the_console_summary_equals_counts_from_the_hops_of_a_hostile_store",
    "test_trace_follows_ancestors_through_a_cycle",
    "test_trace_of_an_unknown_record_is_empty",
    "test_trace_proves_a_batch_read_before_by_its_hops_blocks_and_still_sees_their_edits",
    "test_trace_shows_hops_across_guards_in_order",
    "test_trace_shows_the_batch_status_of_each_hop",
    "test_two_signers_at_once_chain_one_after_the_other",
    "test_unreadable_edit_is_detected",
    "test_verify_clean_store_with_and_without_a_key",
]

T0 = datetime(2026, 11, 27, 12, 0, 0, 123000, tzinfo=UTC)
PIPELINE = "crm-guard"
RUN = "2f0c6c2e-8a4f-4d7b-9a51-6f3c1d2e7b10"
TOPIC = "crm.contacts"
CHAIN = f"{PIPELINE}/{TOPIC}/0"
ALLOWED = "crm.contacts.prod"
QUARANTINE = "crm.contacts.quarantine"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def hop(record_id: str | None, offset: int, **fields: Any) -> Hop:
    values: dict[str, Any] = {
        "record_id": record_id,
        "source_offset": offset,
        "outcome": Outcome.DELIVERED,
        "content_class": "SYNTHETIC",
        "origin_env": "PRODUCTION",
        "tenant_id": "acme",
        "source_system": "outreach-assistant",
        "generator": "email-assistant",
        "digest": f"{offset:064x}",
    }
    values.update(fields)
    return Hop(**values)


def batch(
    hops: list[Hop],
    *,
    at: datetime = T0,
    pipeline: str = PIPELINE,
    run_id: str = RUN,
    partition: int = 0,
    topic: str = TOPIC,
) -> HopBatch:
    return HopBatch(
        pipeline=pipeline,
        run_id=run_id,
        at=at,
        source_topic=topic,
        source_partition=partition,
        allowed_to=ALLOWED,
        quarantined_to=QUARANTINE,
        hops=tuple(hops),
    )


def filled(store: LineageStore, *, batches: int = 3, size: int = 4) -> list[Any]:
    """CHAIN holds `batches` batches of `size` hops (records r0…), each confirmed."""
    entries = []
    for b in range(batches):
        hops = [hop(f"r{b * size + i}", b * size + i) for i in range(size)]
        entry = store.append(batch(hops, at=T0 + timedelta(seconds=b)))
        store.confirm([(entry, size, [])], at=T0 + timedelta(seconds=b, milliseconds=500))
        entries.append(entry)
    assert store.verify().ok
    return entries


def signed(store: LineageStore, key: Ed25519PrivateKey = KEY, run_id: str = RUN) -> Checkpoint:
    """What a run given `--signing-key` does at its end: sign the heads after its latest."""
    return store.add_next_checkpoint(
        lambda checkpoints, heads: sign(
            key, at=T0, run_id=run_id, heads=heads, previous=latest(checkpoints, key.public_key())
        )
    )


def entry_id(run_sql: RunSql, seq: int, chain: str = CHAIN) -> int:
    rows = run_sql(f"SELECT id FROM lineage_entries WHERE chain_id = '{chain}' AND seq = {seq}")
    return int(rows[0][0])


def recompute(run_sql: RunSql, chain: str = CHAIN) -> None:
    """What an intruder with write access does after an edit: recompute every Merkle root and
    link hash of the chain and its head, with lineage-guard's own (public) hashing code."""
    rows = run_sql(
        f"SELECT id, {', '.join(ENTRY_COLUMNS)} FROM lineage_entries"
        f" WHERE chain_id = '{chain}' ORDER BY seq"
    )
    prev = "0" * 64
    last = None
    for expected_seq, row in enumerate(rows, start=1):
        db_id, entry = row[0], read_entry(row[1:])
        assert not isinstance(entry, Exception) and hasattr(entry, "hash")
        changes: dict[str, Any] = {"prev_hash": prev, "seq": expected_seq}
        if str(entry.kind) == "hops":  # type: ignore[union-attr]
            hop_rows = run_sql(
                f"SELECT {', '.join(HOP_COLUMNS[1:])} FROM lineage_hops"
                f" WHERE entry_id = {db_id} ORDER BY idx"
            )
            hops = [read_hop(r, chain, entry.seq) for r in hop_rows]  # type: ignore[union-attr]
            changes["root"] = merkle_root([h.canonical() for h in hops])  # type: ignore[union-attr]
            changes["count"] = len(hops)
        fixed = dataclasses.replace(entry, **changes)  # type: ignore[type-var]
        fixed = dataclasses.replace(fixed, hash=fixed.computed_hash())
        root = f"'{fixed.root}'" if fixed.root else "NULL"
        run_sql(
            f"UPDATE lineage_entries SET seq = {fixed.seq}, root = {root}, count = {fixed.count},"
            f" prev_hash = '{fixed.prev_hash}', hash = '{fixed.hash}' WHERE id = {db_id}"
        )
        prev, last = fixed.hash, fixed
    assert last is not None
    run_sql(
        f"UPDATE lineage_chains SET seq = {last.seq}, hash = '{last.hash}'"
        f" WHERE chain_id = '{chain}'"
    )


def broken_kind(store: LineageStore, **kwargs: Any) -> BreakKind | None:
    result = store.verify(**kwargs)
    return result.broken.kind if result.broken is not None else None


# -- append, trace, deliveries --------------------------------------------------------------


def test_append_then_trace_round_trips_every_field(store: LineageStore) -> None:
    full = hop(
        "3f2b8a1e-9c4d-4e5f-8a7b-1c2d3e4f5a6b",
        9_000_000_001,
        outcome=Outcome.BLOCKED,
        stopped_at=Stage.ENFORCE,
        reasons=(
            Reason(rule="leak_test_origin", message="Record from `TEST` may not reach prod."),
            Reason(rule="tenant_mismatch", message="Tenant `globex` ≠ sink tenant `acme`."),
        ),
        origin_env="TEST",
        tenant_id="globex",
        source_system="faker-seed «test»",
        generator="profile-faker@3.1",
        parent_record_ids=("p-1", "p-2"),
    )
    undecodable = hop(
        None,
        17,
        outcome=Outcome.QUARANTINED,
        stopped_at=Stage.DECODE,
        reasons=(Reason(rule="undecodable", message="not Avro"),),
        content_class=None,
        origin_env=None,
        tenant_id=None,
        source_system=None,
        generator=None,
    )
    at = datetime(2026, 11, 27, 13, 0, 0, 456789, tzinfo=UTC)
    entry = store.append(batch([full, undecodable], at=at, partition=3))
    assert (entry.chain_id, entry.seq, entry.count) == (f"{PIPELINE}/{TOPIC}/3", 1, 2)

    [stored] = store.hops(["3f2b8a1e-9c4d-4e5f-8a7b-1c2d3e4f5a6b"])
    assert stored.hop == full
    assert stored.at == at.replace(microsecond=456000)
    assert (stored.pipeline, stored.run_id, stored.source_topic, stored.source_partition) == (
        PIPELINE,
        RUN,
        TOPIC,
        3,
    )
    assert (stored.destination, stored.delivery, stored.index) == (
        QUARANTINE,
        Delivery.UNCONFIRMED,
        0,
    )
    events = store.trace("3f2b8a1e-9c4d-4e5f-8a7b-1c2d3e4f5a6b")
    assert [(e.event.stage, e.event.decision) for e in events] == [
        (Stage.SOURCE, Decision.PASSED),
        (Stage.DECODE, Decision.PASSED),
        (Stage.VALIDATE, Decision.PASSED),
        (Stage.ENFORCE, Decision.BLOCKED),
        (Stage.WRITE, Decision.SENDING),
    ]
    assert events[3].event.reasons == full.reasons
    assert events[3].event.parent_record_ids == ("p-1", "p-2")
    assert events[-1].event.destination == QUARANTINE
    assert {e.digest for e in events} == {full.digest}


def test_trace_of_an_unknown_record_is_empty(store: LineageStore) -> None:
    filled(store, batches=1)
    assert store.trace("nobody") == []
    assert store.hops(["nobody"]) == []


def test_deliveries_show_sending_until_confirmed_and_failures_as_failed(
    store: LineageStore,
) -> None:
    entry = store.append(
        batch([hop("ok", 0), hop("refused", 1), hop("bad", 2, outcome=Outcome.QUARANTINED,
              stopped_at=Stage.VALIDATE, reasons=(Reason(rule="x", message="m"),))])
    )  # fmt: skip
    assert [h.delivery for h in store.hops(["ok", "refused", "bad"])] == [Delivery.UNCONFIRMED] * 3
    assert store.trace("ok")[-1].event.decision is Decision.SENDING

    store.confirm([(entry, 3, [Failure(offset=1, error="MSG_SIZE_TOO_LARGE")])], at=T0)
    assert store.trace("ok")[-1].event.decision is Decision.DELIVERED
    assert store.trace("bad")[-1].event.decision is Decision.QUARANTINED
    refused = store.trace("refused")[-1].event
    assert refused.decision is Decision.FAILED
    assert refused.reasons == (Reason(rule="delivery_failed", message="MSG_SIZE_TOO_LARGE"),)
    assert store.verify().ok
    assert store.head(CHAIN) is not None and store.head(CHAIN).seq == 2  # type: ignore[union-attr]


def test_admitted_requests_chain_as_if_appended_and_confirmed_one_by_one(
    store: LineageStore,
) -> None:
    """The gateway's group commit (`admit`): requests of one chain in one transaction, one
    whose hops were written before, one sent twice. Each gets its hops and delivery entries in
    turn (the chain's head read and written once for the transaction), the second `b` none."""
    a = store.append(batch([hop("a", 0)], run_id="run-a"))
    b, c = batch([hop("b", 1)], run_id="run-b"), batch([hop("c", 2)], run_id="run-c")
    admitted = store.admit(  # type: ignore[attr-defined]
        [
            Admission(entry=a, confirmed=True),
            Admission(batch=b, confirmed=True),
            Admission(batch=c, confirmed=True),
            Admission(batch=b, confirmed=True),
        ],
        at=T0,
    )
    assert [e.seq for e in admitted] == [1, 3, 5, 3]
    assert [store.trace(r)[-1].event.decision for r in "abc"] == [Decision.DELIVERED] * 3
    head = store.head(CHAIN)
    assert head is not None and head.seq == 6
    result = store.verify()
    assert (result.ok, result.batches, result.hops) == (True, 6, 3)


def test_chains_continue_across_runs_and_reopening(store: LineageStore, store_url: str) -> None:
    first = store.append(batch([hop("a", 0)]))
    with open_store(store_url) as again:
        second = again.append(batch([hop("b", 1)], run_id="another-run"))
    assert (first.seq, second.seq) == (1, 2)
    assert second.prev_hash == first.hash
    assert list(store.chains()) == [CHAIN]
    assert store.verify().ok


def test_concurrent_appends_never_fork_a_chain(store: LineageStore, store_url: str) -> None:
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with open_store(store_url) as own:
                for i in range(10):
                    own.append(batch([hop(f"{name}-{i}", i)]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    result = store.verify()
    assert result.ok, result.broken
    assert (result.batches, result.hops) == (30, 30)
    assert store.head(CHAIN).seq == 30  # type: ignore[union-attr]


def test_a_batch_is_one_transaction(store: LineageStore, run_sql: RunSql) -> None:
    filled(store, batches=1)
    run_sql("CREATE UNIQUE INDEX intruder ON lineage_hops (record_id)")  # makes r0 collide
    with pytest.raises(Exception, match="Nothing of this batch was written"):
        store.append(batch([hop("fresh", 10), hop("r0", 11)]))
    assert store.hops(["fresh"]) == []
    assert store.head(CHAIN).seq == 2  # type: ignore[union-attr]
    assert store.verify().ok


def test_a_retried_batch_is_recorded_once(store: LineageStore) -> None:
    """A bundle retried by the runner writes the same batch again (same run, same offsets,
    same rows, a later time): the store keeps the first, and its one delivery entry."""
    first = store.append(batch([hop("a", 0), hop("b", 1)]))
    again = store.append(batch([hop("a", 0), hop("b", 1)], at=T0 + timedelta(seconds=3)))
    assert again == first
    store.confirm([(first, 2, [])], at=T0)
    store.confirm([(again, 2, [])], at=T0 + timedelta(seconds=4))
    assert [(h.seq, h.delivery) for h in store.hops(["a", "b"])] == [(1, Delivery.CONFIRMED)] * 2
    assert store.head(CHAIN).seq == 2  # type: ignore[union-attr]
    # Another run reading the same offsets again is a new pass: recorded.
    later = store.append(batch([hop("a", 0), hop("b", 1)], run_id="run-2"))
    changed = store.append(batch([hop("a", 0), hop("b", 1, tenant_id="globex")]))
    assert (later.seq, changed.seq) == (3, 4)
    assert store.verify().ok


def test_content_classes_gives_the_highest_recorded_class(store: LineageStore) -> None:
    store.append(
        batch([hop("p", 0, content_class="AI_ASSISTED"), hop("h", 1, content_class="HUMAN")])
    )
    store.append(batch([hop("p", 2, content_class="SYNTHETIC")], pipeline="enrich"))
    assert store.content_classes(["p", "h", "unknown"]) == {"p": "SYNTHETIC", "h": "HUMAN"}


def test_run_counts_count_one_runs_hops_per_decision(store: LineageStore) -> None:
    leak = [Reason(rule="leak_test_origin", message="x1"), Reason(rule="leak_a", message="x2")]
    stopped = {"outcome": Outcome.QUARANTINED, "stopped_at": Stage.VALIDATE}
    first = store.append(
        batch(
            [
                hop("a", 0),
                hop("b", 1),
                hop("c", 2, content_class=None, reasons=[Reason(rule="r", message="c")], **stopped),
                hop(
                    "d",
                    3,
                    content_class=None,
                    reasons=[Reason(rule="r", message="d")] * 2,
                    **stopped,
                ),
            ]
        )
    )
    store.confirm([(first, 4, [])], at=T0 + timedelta(seconds=1))  # the destination answered
    blocked = {"outcome": Outcome.BLOCKED, "stopped_at": Stage.ENFORCE, "origin_env": "TEST"}
    later = T0 + timedelta(seconds=5)
    store.append(batch([hop("e", 4, reasons=leak, **blocked), hop("f", 5)], at=later))
    store.append(batch([hop("g", 6)], run_id="another-run"))
    store.append(batch([hop("h", 7)], pipeline="another-guard"))

    def counted(**kwargs: Any) -> set[RunCount]:
        return set(store.run_counts(PIPELINE, RUN, **kwargs))

    def row(outcome: str, n: int, **fields: Any) -> RunCount:
        values: dict[str, Any] = {"stopped_at": None, "rules": (), "content_class": "SYNTHETIC"}
        values |= {"origin_env": "PRODUCTION", "confirmed": False, **fields}
        return RunCount(outcome=outcome, count=n, **values)

    quarantined = {"stopped_at": "validate", "rules": ("r",), "content_class": None}
    blocked_row = {"stopped_at": "enforce", "rules": ("leak_a", "leak_test_origin")}
    blocked_row |= {"origin_env": "TEST"}
    assert counted() == {
        row("delivered", 2, confirmed=True),
        row("delivered", 1),
        row("quarantined", 2, confirmed=True, **quarantined),
        row("blocked", 1, **blocked_row),
    }
    assert counted(since=later) == {row("delivered", 1), row("blocked", 1, **blocked_row)}
    assert counted(past={(TOPIC, 0): 3, (TOPIC, 1): 0}) == {
        row("quarantined", 1, confirmed=True, **quarantined),
        row("delivered", 1),
        row("blocked", 1, **blocked_row),
    }
    assert counted(past={}) == set()
    assert store.run_counts(PIPELINE, "no-such-run") == []


def test_long_ids_are_kept_bounded_and_found_by_their_full_value(
    store: LineageStore, run_sql: RunSql
) -> None:
    """A hop keeps a 10,000-character id by its head and digest (`lineage.bounds`): the store
    takes the row, `trace` and the class look-up find it by the full id, ancestors included,
    and the chain verifies."""
    child, parent = "c" * 9_000 + "é" * 1_000, "p" * 10_000
    store.append(
        batch([
            hop(stored_id(child), 0, parent_record_ids=(stored_id(parent),)),
            hop(stored_id(parent), 1, content_class="AI_ASSISTED"),
        ])
    )  # fmt: skip
    kept = sorted(row[0] for row in run_sql("SELECT record_id FROM lineage_hops"))
    assert kept == sorted([stored_id(child), stored_id(parent)])
    assert all(len(record_id) == ID_LIMIT for record_id in kept)
    assert kept[0].startswith("c" * 64 + "...sha256:")
    assert [s.event.record_id for s in store.trace(child)] == [stored_id(child)] * len(Stage)
    assert store.content_classes([parent, child]) == {
        parent: "AI_ASSISTED",
        child: "SYNTHETIC",
    }
    result = queries.trace(store, child)
    depths = {(t.stored.event.record_id, t.depth) for t in result.events}
    assert depths == {(stored_id(child), 0), (stored_id(parent), 1)}
    assert result.missing_ancestors == ()
    assert store.verify().ok


def test_trace_shows_hops_across_guards_in_order(store: LineageStore) -> None:
    store.append(batch([hop("x", 5)], pipeline="enrich", at=T0))
    store.append(batch([hop("x", 9)], pipeline="production-sink", at=T0 + timedelta(seconds=1)))
    result = queries.trace(store, "x")
    pipelines = [(t.stored.event.pipeline, t.stored.event.stage) for t in result.events]
    assert pipelines == [("enrich", s) for s in Stage] + [("production-sink", s) for s in Stage]
    assert {c.status for c in result.chains} == {"ok"}


def test_trace_follows_ancestors_through_a_cycle(store: LineageStore) -> None:
    store.append(
        batch([
            hop("child", 0, parent_record_ids=("parent",)),
            hop("parent", 1, parent_record_ids=("grandparent", "child")),
            hop("grandparent", 2, parent_record_ids=("lost",)),
        ])
    )  # fmt: skip
    result = queries.trace(store, "child")
    depths = {(t.stored.event.record_id, t.depth) for t in result.events}
    assert depths == {("child", 0), ("parent", 1), ("grandparent", 2)}
    assert result.missing_ancestors == ("lost",)


def test_trace_shows_the_batch_status_of_each_hop(store: LineageStore, run_sql: RunSql) -> None:
    filled(store, batches=2)
    run_sql("UPDATE lineage_hops SET tenant_id = 'globex' WHERE record_id = 'r1'")
    edited = queries.trace(store, "r1")
    assert [c.status for c in edited.chains] == ["broken"]
    assert not edited.intact
    clean = queries.trace(store, "r5")  # another batch of the same chain
    assert [c.status for c in clean.chains] == ["ok"]


def test_trace_proves_a_batch_read_before_by_its_hops_blocks_and_still_sees_their_edits(
    store: LineageStore, store_url: str, run_sql: RunSql
) -> None:
    """A batch a trace read whole is then proven by the traced hops' blocks of 16 rows
    (`lineage.proofs`): an edit of such a row, or of the entry, is still seen; an edit of
    another block is seen by a full verification, and by a fresh store object's trace."""
    entry = store.append(batch([hop(f"r{i}", i) for i in range(40)]))
    store.confirm([(entry, 40, [])], at=T0)
    first = queries.trace(store, "r1")
    assert [(c.status, c.checked, c.read_whole_at) for c in first.chains] == [("ok", "batch", None)]
    again = queries.trace(store, "r1")
    assert [(c.status, c.checked) for c in again.chains] == [("ok", "rows")]
    assert again.chains[0].read_whole_at is not None
    assert "inclusion proof" in again.chains[0].describe()

    run_sql("UPDATE lineage_hops SET tenant_id = 'globex' WHERE record_id = 'r35'")  # block 2
    assert [c.checked for c in queries.trace(store, "r1").chains] == ["rows"]  # block 0: intact
    assert [c.status for c in queries.trace(store, "r35").chains] == ["broken"]
    assert store.verify_batches(CHAIN, [1])[1] is not None
    with open_store(store_url) as fresh:
        assert [c.status for c in queries.trace(fresh, "r1").chains] == ["broken"]
    run_sql("UPDATE lineage_hops SET tenant_id = 'acme' WHERE record_id = 'r35'")  # undone

    assert [c.checked for c in queries.trace(store, "r2").chains] == ["rows"]
    run_sql("UPDATE lineage_hops SET origin_env = 'TEST' WHERE record_id = 'r2'")  # in block 0
    edited = queries.trace(store, "r1")
    assert [(c.status, c.checked) for c in edited.chains] == [("broken", "batch")]
    assert edited.chains[0].broken is not None
    assert edited.chains[0].broken.kind is BreakKind.EDITED
    run_sql("UPDATE lineage_hops SET origin_env = 'PRODUCTION' WHERE record_id = 'r2'")
    assert [(c.status, c.checked) for c in queries.trace(store, "r1").chains] == [("ok", "rows")]

    run_sql("DELETE FROM lineage_hops WHERE record_id = 'r3'")  # r1's block loses a row
    assert [c.status for c in queries.trace(store, "r1").chains] == ["broken"]
    run_sql(f"UPDATE lineage_entries SET count = 39 WHERE chain_id = '{CHAIN}' AND seq = 1")
    assert [c.status for c in queries.trace(store, "r1").chains] == ["broken"]


def test_events_and_scan_filter_by_time_stage_and_decision(store: LineageStore) -> None:
    filled(store, batches=3, size=2)
    later = list(store.scan(since=T0 + timedelta(seconds=1)))
    assert [h.hop.record_id for h in later] == ["r2", "r3", "r4", "r5"]
    window = list(store.scan(since=T0 + timedelta(seconds=1), until=T0 + timedelta(seconds=2)))
    assert [h.hop.record_id for h in window] == ["r2", "r3"]
    delivered = list(store.events(stage=Stage.WRITE, decision=Decision.DELIVERED))
    assert [e.event.record_id for e in delivered] == [f"r{i}" for i in range(6)]
    assert list(store.events(decision=Decision.BLOCKED)) == []


# -- leaks ----------------------------------------------------------------------------------


def test_leaks_count_only_acknowledged_deliveries_and_dedupe_redeliveries(
    store: LineageStore,
) -> None:
    test_profile = hop("t1", 0, origin_env="TEST", digest="aa" * 32)
    first = store.append(batch([test_profile, hop("fine", 1)]))
    store.confirm([(first, 2, [])], at=T0)
    again = store.append(batch([test_profile], at=T0 + timedelta(seconds=5)))  # re-delivered
    store.confirm([(again, 1, [])], at=T0)
    unacknowledged = store.append(batch([hop("t2", 2, origin_env="STAGING")]))
    refused = store.append(batch([hop("t3", 3, origin_env="TEST")]))
    store.confirm([(refused, 1, [Failure(offset=3, error="refused")])], at=T0)
    assert unacknowledged.seq == 5

    report = queries.leaks(store)
    assert [leak.stored.event.record_id for leak in report.leaks] == ["t1"]
    assert [r.rule for r in report.leaks[0].why] == ["origin_not_production"]
    assert [leak.stored.event.record_id for leak in report.unconfirmed] == ["t2"]
    assert report.blocked == ()
    trace = queries.trace(store, "t1")
    writes = [t for t in trace.events if t.stored.event.stage is Stage.WRITE]
    assert [t.redelivery for t in writes] == [False, True]


def test_leaks_none_when_the_guard_blocked_the_attempts(store: LineageStore) -> None:
    blocked = hop(
        "t1",
        0,
        origin_env="TEST",
        outcome=Outcome.BLOCKED,
        stopped_at=Stage.ENFORCE,
        reasons=(Reason(rule="leak_test_origin", message="no"),),
    )
    entry = store.append(batch([blocked, hop("ok", 1)]))
    store.confirm([(entry, 2, [])], at=T0)
    report = queries.leaks(store)
    assert report.leaks == () and report.unconfirmed == ()
    assert [b.event.record_id for b in report.blocked] == ["t1"]


def test_leaks_found_in_sql_equal_the_scan_of_every_hop_on_a_hostile_store(
    store: LineageStore,
) -> None:
    """`queries.leaks` (candidates found in SQL) gives what a Python scan of every hop gives
    (`tests.reference_leaks`), over every window and destination filter, on a store of every
    case the rules tell apart."""

    def put(hops: list[Hop], *, second: int, confirm: bool = True, **kwargs: Any) -> None:
        made = batch(hops, at=T0 + timedelta(seconds=second))
        made = dataclasses.replace(made, **kwargs)
        entry = store.append(made)
        if confirm:
            failed = [Failure(offset=h.source_offset, error="refused") for h in hops
                      if h.record_id == "refused"]  # fmt: skip
            store.confirm([(entry, len(hops), failed)], at=T0 + timedelta(seconds=second))

    def quarantined(record_id: str, offset: int, **fields: Any) -> Hop:
        values: dict[str, Any] = {
            "outcome": Outcome.QUARANTINED,
            "stopped_at": Stage.VALIDATE,
            "reasons": (Reason(rule="generator_required", message="no"),),
        }
        return hop(record_id, offset, **{**values, **fields})

    def blocked(record_id: str, offset: int, **fields: Any) -> Hop:
        values: dict[str, Any] = {"outcome": Outcome.BLOCKED, "stopped_at": Stage.ENFORCE}
        return hop(record_id, offset, **{**values, **fields})

    same = "ab" * 32  # the bytes that failed validation, delivered again elsewhere
    put([quarantined("stripped", 0, digest=same), quarantined("bare", 1, digest=same, reasons=()),
         hop("blocked-at-validate", 2, digest=same, outcome=Outcome.BLOCKED,
             stopped_at=Stage.VALIDATE)], second=0)  # fmt: skip
    put([hop("stripped", 10, digest=same),  # failed validation in another guard, delivered
         hop("stripped", 11, digest="cd" * 32),  # other bytes: fine
         hop("bare", 12, digest=same, origin_env="TEST"),  # both rules
         hop("blocked-at-validate", 13, digest=same),  # blocked is not quarantined: fine
         hop("test", 14, origin_env="TEST"), hop("test", 14, origin_env="TEST"),  # duplicate
         hop("no-origin", 15, origin_env=None), hop(None, 16, origin_env="STAGING"),
         hop("unvalidated", 17), hop("refused", 18, origin_env="TEST")],
        second=1, pipeline="production-sink")  # fmt: skip
    put([hop("test", 14, origin_env="TEST")], second=2)  # a re-delivery after a crash
    put([hop("sending", 20, origin_env="STAGING")], second=3, confirm=False)
    put([hop("late", 21, origin_env="STAGING")], second=4, confirm=False)
    put([hop("late", 21, origin_env="STAGING")], second=5)  # acknowledged the second time
    put([hop("handed-on", 22, origin_env="TEST")], second=6, allowed_to="pipeline:next")
    put([hop("elsewhere", 23, origin_env="TEST")], second=7, allowed_to="crm.contacts.dev")
    put([hop("validated-later", 24, digest=same)], second=8)
    put([quarantined("validated-later", 25, digest=same)], second=9)
    put([blocked("leak-rule", 30, reasons=(Reason(rule="leak_test_origin", message="m"),)),
         blocked("tenant-rule", 31, reasons=(Reason(rule="tenant_mismatch", message="m"),)),
         blocked("never-stopped", 32, stopped_at=None, origin_env="TEST"),
         blocked("at-decode", 33, stopped_at=Stage.DECODE, origin_env="TEST"),
         blocked("no-origin-blocked", 34, origin_env=None),
         blocked("staging-blocked", 35, origin_env="STAGING")], second=10)  # fmt: skip

    report = queries.leaks(store)
    ids = [(leak.stored.event.record_id, [r.rule for r in leak.why]) for leak in report.leaks]
    assert ids == [
        ("stripped", ["failed_validation"]),
        ("bare", ["origin_not_production", "failed_validation"]),
        ("test", ["origin_not_production"]),
        ("no-origin", ["origin_not_production"]),
        (None, ["origin_not_production"]),
        ("late", ["origin_not_production"]),
        ("elsewhere", ["origin_not_production"]),
        ("validated-later", ["failed_validation"]),
    ]
    assert "(quarantined)" in report.leaks[1].why[1].message
    assert [leak.stored.event.record_id for leak in report.unconfirmed] == ["sending"]
    assert [b.event.record_id for b in report.blocked] == [
        "leak-rule", "never-stopped", "no-origin-blocked", "staging-blocked",
    ]  # fmt: skip
    assert queries.leaks(store, blocked=False).blocked == ()
    windows: list[dict[str, Any]] = [
        {},
        {"since": T0 + timedelta(seconds=1)},
        {"until": T0 + timedelta(seconds=5)},
        {"since": T0 + timedelta(seconds=2), "until": T0 + timedelta(seconds=9)},
        {"production_destinations": {ALLOWED}},
        {"production_destinations": {ALLOWED, "crm.contacts.dev", "pipeline:next"}},
        {"production_destinations": set()},
        {"since": T0 + timedelta(seconds=4), "production_destinations": {"crm.contacts.dev"}},
    ]
    for window in windows:
        assert queries.leaks(store, **window).to_dict() == scanned_leaks(store, **window).to_dict()


# -- tampering without and with a key -------------------------------------------------------


def test_verify_clean_store_with_and_without_a_key(store: LineageStore) -> None:
    filled(store)
    signed(store)
    plain = store.verify()
    assert (plain.ok, plain.chains, plain.batches, plain.hops) == (True, 1, 6, 12)
    keyed = store.verify(public_key=KEY.public_key())
    assert (keyed.ok, keyed.signed_checkpoints) == (True, 1)


def test_editing_a_hop_row_is_detected_with_and_without_a_key(
    store: LineageStore, run_sql: RunSql
) -> None:
    filled(store)
    signed(store)
    run_sql("UPDATE lineage_hops SET origin_env = 'TEST' WHERE record_id = 'r5'")
    result = store.verify()
    assert result.broken is not None and result.broken.kind is BreakKind.EDITED
    assert result.broken.seq == 3  # r5 is in the second hops batch (entries 1,2 | 3,4 | 5,6)
    assert broken_kind(store, public_key=KEY.public_key()) is BreakKind.EDITED


def test_deleting_a_hop_row_is_detected(store: LineageStore, run_sql: RunSql) -> None:
    filled(store)
    run_sql("DELETE FROM lineage_hops WHERE record_id = 'r6'")
    assert broken_kind(store) is BreakKind.DELETED


def test_inserting_a_hop_row_is_detected(store: LineageStore, run_sql: RunSql) -> None:
    filled(store)
    first = entry_id(run_sql, 1)
    run_sql(
        "INSERT INTO lineage_hops (entry_id, idx, record_id, source_offset, outcome, digest)"
        f" SELECT {first}, 99, 'forged', 99, 'delivered', digest FROM lineage_hops"
        " WHERE record_id = 'r0'"
    )
    assert broken_kind(store) is BreakKind.INSERTED


def test_editing_a_batch_header_is_detected(store: LineageStore, run_sql: RunSql) -> None:
    filled(store)
    run_sql(
        f"UPDATE lineage_entries SET allowed_to = 'elsewhere' WHERE id = {entry_id(run_sql, 3)}"
    )
    assert broken_kind(store) is BreakKind.EDITED


def test_unreadable_edit_is_detected(store: LineageStore, run_sql: RunSql) -> None:
    filled(store)
    run_sql("UPDATE lineage_hops SET reasons = 'not json' WHERE record_id = 'r2'")
    result = store.verify()
    assert result.broken is not None and result.broken.kind is BreakKind.UNREADABLE
    assert (result.broken.seq, result.broken.index) == (1, 2)


def test_deleting_a_whole_batch_is_detected(store: LineageStore, run_sql: RunSql) -> None:
    filled(store)
    doomed = entry_id(run_sql, 3)
    run_sql(f"DELETE FROM lineage_hops WHERE entry_id = {doomed}")
    run_sql(f"DELETE FROM lineage_entries WHERE id = {doomed}")
    assert broken_kind(store) is BreakKind.DELETED  # seq 3 is missing between 2 and 4
    # and the intruder who renumbers the later entries breaks the next link instead
    # (through +1000 first: neither database may see two rows with one seq on the way)
    run_sql(f"UPDATE lineage_entries SET seq = seq + 1000 WHERE chain_id = '{CHAIN}' AND seq > 3")
    run_sql(
        f"UPDATE lineage_entries SET seq = seq - 1001 WHERE chain_id = '{CHAIN}' AND seq > 1000"
    )
    run_sql(f"UPDATE lineage_chains SET seq = seq - 1 WHERE chain_id = '{CHAIN}'")
    assert broken_kind(store) is BreakKind.RELINKED


def test_deleting_the_tail_is_detected(store: LineageStore, run_sql: RunSql) -> None:
    filled(store)
    last = entry_id(run_sql, 6)
    run_sql(f"DELETE FROM lineage_entries WHERE id = {last}")
    assert broken_kind(store) is BreakKind.DELETED  # the head still names batch 6


def test_deleting_the_tail_and_rewinding_the_head_is_detected_only_with_a_key(
    store: LineageStore, run_sql: RunSql
) -> None:
    filled(store)
    signed(store)
    for seq in (6, 5):
        doomed = entry_id(run_sql, seq)
        run_sql(f"DELETE FROM lineage_hops WHERE entry_id = {doomed}")
        run_sql(f"DELETE FROM lineage_entries WHERE id = {doomed}")
    [(hash_,)] = run_sql(f"SELECT hash FROM lineage_entries WHERE chain_id = '{CHAIN}' AND seq = 4")
    run_sql(f"UPDATE lineage_chains SET seq = 4, hash = '{hash_}' WHERE chain_id = '{CHAIN}'")
    assert store.verify().ok  # what the hash chain alone cannot see
    assert broken_kind(store, public_key=KEY.public_key()) is BreakKind.UNSIGNED


def test_recomputed_chain_is_detected_only_with_a_key(store: LineageStore, run_sql: RunSql) -> None:
    filled(store)
    signed(store)
    run_sql("UPDATE lineage_hops SET origin_env = 'TEST' WHERE record_id = 'r1'")
    recompute(run_sql)
    assert store.verify().ok  # the intruder's recomputed chain links up
    result = store.verify(public_key=KEY.public_key())
    assert result.broken is not None and result.broken.kind is BreakKind.UNSIGNED
    assert result.broken.chain_id == CHAIN


def test_deleting_a_whole_chain_is_detected_only_with_a_key(
    store: LineageStore, run_sql: RunSql
) -> None:
    filled(store)
    store.append(batch([hop("other", 0)], partition=1))
    signed(store)
    run_sql(
        "DELETE FROM lineage_hops WHERE entry_id IN"
        f" (SELECT id FROM lineage_entries WHERE chain_id = '{CHAIN}')"
    )
    run_sql(f"DELETE FROM lineage_entries WHERE chain_id = '{CHAIN}'")
    run_sql(f"DELETE FROM lineage_chains WHERE chain_id = '{CHAIN}'")
    assert store.verify().ok
    assert broken_kind(store, public_key=KEY.public_key()) is BreakKind.UNSIGNED


def test_forged_checkpoint_is_detected(store: LineageStore, run_sql: RunSql) -> None:
    filled(store)
    signed(store)
    run_sql("UPDATE lineage_checkpoints SET heads = REPLACE(heads, '\"seq\":6', '\"seq\":5')")
    assert broken_kind(store, public_key=KEY.public_key()) is BreakKind.SIGNATURE


def test_deleting_checkpoints_fails_a_verify_with_a_key(
    store: LineageStore, run_sql: RunSql
) -> None:
    filled(store)
    signed(store, OTHER_KEY)  # a checkpoint by another key vouches for nothing
    signed(store)
    assert store.verify(public_key=KEY.public_key()).signed_checkpoints == 1
    run_sql(f"DELETE FROM lineage_checkpoints WHERE key_id <> '{_other_key_id()}'")
    assert broken_kind(store, public_key=KEY.public_key()) is BreakKind.UNSIGNED


def _other_key_id() -> str:
    return key_id(OTHER_KEY.public_key())


# -- checkpoints chained, and checked against the copy an auditor holds -----------------------

RUN_2 = "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"


def two_runs(store: LineageStore, second: list[Hop]) -> tuple[Checkpoint, Checkpoint]:
    """Run 1 writes CHAIN's batches 1-4 and signs; run 2 writes `second` (batches 5-6) and
    signs. Returns both checkpoints: the second is the one the auditor holds (from the run's
    OpenLineage event or `--checkpoint-out`)."""
    filled(store, batches=2)
    first = signed(store)
    entry = store.append(batch(second, run_id=RUN_2, at=T0 + timedelta(seconds=5)))
    store.confirm([(entry, len(second), [])], at=T0 + timedelta(seconds=6))
    return first, signed(store, run_id=RUN_2)


def verify_cli(store_url: str, held: Checkpoint, tmp_path: Any) -> Any:
    """`lineage verify --public-key KEY --checkpoint FILE`, as an auditor runs it."""
    from cryptography.hazmat.primitives import serialization

    from tests.cli import run_cli

    public = tmp_path / "guard.pub"
    public.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert held.envelope is not None
    copy = tmp_path / "checkpoint.dsse.json"
    copy.write_text(held.envelope)
    return run_cli(
        "lineage", "verify", "--lineage-store", store_url, "--public-key", public,
        "--checkpoint", copy,
    )  # fmt: skip


def test_a_store_rolled_back_by_a_run_fails_against_the_held_checkpoint(
    store: LineageStore, store_url: str, run_sql: RunSql, tmp_path: Any
) -> None:
    _, held = two_runs(store, [hop("n1", 8), hop("n2", 9)])
    assert verify_cli(store_url, held, tmp_path).returncode == 0
    # the intruder deletes run 2's entries, hops and checkpoint, and rewinds the head
    for seq in (6, 5):
        doomed = entry_id(run_sql, seq)
        run_sql(f"DELETE FROM lineage_hops WHERE entry_id = {doomed}")
        run_sql(f"DELETE FROM lineage_entries WHERE id = {doomed}")
    [(hash_,)] = run_sql(f"SELECT hash FROM lineage_entries WHERE chain_id = '{CHAIN}' AND seq = 4")
    run_sql(f"UPDATE lineage_chains SET seq = 4, hash = '{hash_}' WHERE chain_id = '{CHAIN}'")
    run_sql(f"DELETE FROM lineage_checkpoints WHERE run_id = '{RUN_2}'")
    assert store.verify(public_key=KEY.public_key()).ok  # the store alone is consistent
    result = store.verify(public_key=KEY.public_key(), held=held)
    assert result.broken is not None
    assert (result.broken.kind, result.broken.chain_id, result.broken.seq) == (
        BreakKind.ROLLED_BACK, CHAIN, 6,
    )  # fmt: skip
    verified = verify_cli(store_url, held, tmp_path)
    assert verified.returncode == 1
    assert verified.stderr.splitlines() == [
        f"lineage-guard: chain `{CHAIN}` batch 6, which the held checkpoint 2 of run `{RUN_2}`"
        " (2026-11-27T12:00:00.123Z) signed, is no longer in the store (it ends at batch 4):"
        " the store was rolled back"
    ]


def test_a_store_rewritten_after_a_blocked_hop_fails_against_the_held_checkpoint(
    store: LineageStore, store_url: str, run_sql: RunSql, tmp_path: Any
) -> None:
    blocked = hop(
        "t1", 8, origin_env="TEST", outcome=Outcome.BLOCKED, stopped_at=Stage.ENFORCE,
        reasons=(Reason(rule="leak_test_origin", message="no"),),
    )  # fmt: skip
    _, held = two_runs(store, [blocked, hop("n2", 9)])
    assert [b.event.record_id for b in queries.leaks(store).blocked] == ["t1"]
    # the intruder turns the blocked hop into a delivered one, recomputes the chain and
    # deletes only the newest checkpoint (the older one signed batches run 2 did not touch)
    run_sql(
        "UPDATE lineage_hops SET outcome = 'delivered', stopped_at = NULL, reasons = NULL"
        " WHERE record_id = 't1'"
    )
    recompute(run_sql)
    run_sql(f"DELETE FROM lineage_checkpoints WHERE run_id = '{RUN_2}'")
    assert queries.leaks(store).blocked == ()
    assert store.verify(public_key=KEY.public_key()).ok  # the store alone is consistent
    result = store.verify(public_key=KEY.public_key(), held=held)
    assert result.broken is not None
    assert (result.broken.kind, result.broken.chain_id, result.broken.seq) == (
        BreakKind.UNSIGNED, CHAIN, 6,
    )  # fmt: skip
    verified = verify_cli(store_url, held, tmp_path)
    assert verified.returncode == 1
    assert verified.stderr.splitlines() == [
        f"lineage-guard: chain `{CHAIN}` batch 6 is not the batch the held checkpoint 2 of run"
        f" `{RUN_2}` (2026-11-27T12:00:00.123Z) signed: the chain was rewritten and recomputed"
    ]


def test_checkpoints_are_chained_and_a_deleted_middle_one_is_seen(
    store: LineageStore, run_sql: RunSql
) -> None:
    first, second = two_runs(store, [hop("n1", 8)])
    third = signed(store, run_id="run-3")
    assert (first.seq, second.seq, third.seq) == (1, 2, 3)
    assert second.previous is not None and second.previous.sha256 == first.digest()
    assert store.verify(public_key=KEY.public_key(), held=third).signed_checkpoints == 3
    run_sql(f"DELETE FROM lineage_checkpoints WHERE run_id = '{RUN_2}'")
    result = store.verify(public_key=KEY.public_key())
    assert result.broken is not None and result.broken.kind is BreakKind.ROLLED_BACK
    assert result.broken.description.startswith(
        "checkpoint 3 of run `run-3` (2026-11-27T12:00:00.123Z) follows checkpoint 2 (sha256"
    )


def test_two_signers_at_once_chain_one_after_the_other(store: LineageStore, store_url: str) -> None:
    """Two runs signing with the same key at the same moment: the second reads the checkpoints
    only once the first has written its own, so they are checkpoints 1 and 2, not two 1s."""
    filled(store, batches=1)
    inside = threading.Event()
    seen: dict[str, int] = {}
    made: dict[str, Checkpoint] = {}

    def signer(name: str, pause_s: float) -> Callable[[list[Checkpoint], list[Any]], Checkpoint]:
        def make(checkpoints: list[Checkpoint], heads: list[Any]) -> Checkpoint:
            seen[name] = len(checkpoints)
            inside.set()
            time.sleep(pause_s)  # the other signer asks meanwhile
            previous = latest(checkpoints, KEY.public_key())
            return sign(KEY, at=T0, run_id=name, heads=heads, previous=previous)

        return make

    first = threading.Thread(
        target=lambda: made.__setitem__("a", store.add_next_checkpoint(signer("a", 0.5)))
    )
    first.start()
    assert inside.wait(10)
    with open_store(store_url) as other:
        made["b"] = other.add_next_checkpoint(signer("b", 0))
    first.join(10)
    assert seen == {"a": 0, "b": 1}
    assert (made["a"].seq, made["b"].seq) == (1, 2)
    assert store.verify(public_key=KEY.public_key(), held=made["b"]).signed_checkpoints == 2


def test_checkpoints_written_before_chaining_still_verify_and_start_the_chain(
    store: LineageStore,
) -> None:
    """A store whose checkpoints were written by an earlier version (a bare signature over
    canonical JSON) verifies, and the next checkpoint chains after them."""
    filled(store, batches=1)
    heads = tuple(store.heads())
    bare = signed_bytes(at=T0, run_id="old-run", heads=heads)
    import base64

    store.add_checkpoint(
        Checkpoint(
            at=T0, run_id="old-run", heads=heads, key_id=key_id(KEY.public_key()),
            signature=base64.b64encode(KEY.sign(bare)).decode(),
        )
    )  # fmt: skip
    assert store.verify(public_key=KEY.public_key()).signed_checkpoints == 1
    new = signed(store, run_id="new-run")
    assert new.seq == 2 and new.previous is not None
    assert new.previous.sha256 == hashlib.sha256(bare).hexdigest()
    keyed = store.verify(public_key=KEY.public_key(), held=new)
    assert (keyed.ok, keyed.signed_checkpoints) == (True, 2)


# -- the console's summary: counts every append keeps, equal to counts from the hops -----------

SUMMARY_TENANTS = ("acme", "globex", None, "", "<script>t</script>", "a,b")
SUMMARY_PIPELINES = (PIPELINE, 'enrich "x"')
SUMMARY_REASONS = (
    (),
    (Reason(rule="provenance_missing", message="m1"),),
    (Reason(rule="provenance_missing", message="m2"), Reason(rule="leak_test", message="m3"),
     Reason(rule="provenance_missing", message="again")),  # a rule twice in one hop: counted once
    (Reason(rule='["rule", "with JSON"]', message="m4"),),
)  # fmt: skip
SUMMARY_DECISIONS = (
    (Outcome.DELIVERED, None),
    (Outcome.QUARANTINED, Stage.VALIDATE),
    (Outcome.QUARANTINED, Stage.DECODE),
    (Outcome.BLOCKED, Stage.ENFORCE),
)


def hostile_batch(n: int, *, partition: int, size: int = 23) -> HopBatch:
    """Batch `n` of a store that the summary must count exactly: six tenants (no tenant, an
    empty one, markup, a comma), two pipelines, every decision, several rules per hop, four
    hours; records come again in later batches (re-deliveries)."""
    hops = []
    for i in range(size):
        k = n * size + i
        outcome, stopped_at = SUMMARY_DECISIONS[k % len(SUMMARY_DECISIONS)]
        hops.append(
            hop(
                f"rec-{k % 40}",  # a record id comes again in later batches
                k,
                outcome=outcome,
                stopped_at=stopped_at,
                reasons=SUMMARY_REASONS[k % 3 + 1] if outcome is not Outcome.DELIVERED
                else SUMMARY_REASONS[k % 2],  # a delivered hop may carry reasons: not a rule count
                tenant_id=SUMMARY_TENANTS[k % len(SUMMARY_TENANTS)],
                content_class=(None, "HUMAN", "SYNTHETIC")[k % 3],
            )
        )  # fmt: skip
    at = T0 + timedelta(minutes=25 * (n % 7), milliseconds=n)  # 12:00 to 14:30: three hours
    if n % 5 == 4:
        at += timedelta(days=3)
    return batch(
        hops, at=at, pipeline=SUMMARY_PIPELINES[n % 2], partition=partition, run_id=f"run-{n}"
    )


def counts_from_hops(
    store: LineageStore, tenants: set[str] | None = None
) -> tuple[Counter[tuple[Any, ...]], Counter[str]]:
    """Hops per (hour, pipeline, outcome, stopped_at, content class, tenant) and quarantined
    or blocked hops per rule, counted here from every hop the store holds."""
    hops: Counter[tuple[Any, ...]] = Counter()
    rules: Counter[str] = Counter()
    for stored in store.scan():
        h = stored.hop
        if tenants is not None and h.tenant_id not in tenants:
            continue
        hour = stored.at.replace(minute=0, second=0, microsecond=0)
        stopped = str(h.stopped_at) if h.stopped_at is not None else None
        hops[(hour, stored.pipeline, str(h.outcome), stopped, h.content_class, h.tenant_id)] += 1
        if h.outcome is not Outcome.DELIVERED:
            rules.update({reason.rule for reason in h.reasons})
    return hops, rules


def summarized(
    store: LineageStore, tenants: set[str] | None = None
) -> tuple[Counter[tuple[Any, ...]], Counter[str]]:
    hops: Counter[tuple[Any, ...]] = Counter()
    for c in store.hop_counts(tenants=tenants):
        hops[(c.hour, c.pipeline, c.outcome, c.stopped_at, c.content_class, c.tenant_id)] += c.count
    return hops, Counter(store.rule_counts(tenants=tenants))


def assert_summary_is_exact(store: LineageStore, hops: int) -> None:
    expected = counts_from_hops(store)
    assert sum(expected[0].values()) == hops
    assert summarized(store) == expected
    for tenants in ({"acme", "a,b"}, {"", "<script>t</script>"}, set()):
        assert summarized(store, tenants) == counts_from_hops(store, tenants), tenants


def test_the_console_summary_equals_counts_from_the_hops_of_a_hostile_store(
    store: LineageStore, store_url: str, run_sql: RunSql
) -> None:
    errors: list[BaseException] = []

    def writer(first: int, partition: int) -> None:
        try:
            with open_store(store_url) as own:  # two writers, each with its own connection
                for n in range(first, 20, 2):
                    own.append(hostile_batch(n, partition=partition))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w, w)) for w in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store.append(hostile_batch(3, partition=1))  # a retried bundle: written (and counted) once
    assert_summary_is_exact(store, 20 * 23)
    [(rows, counted)] = run_sql("SELECT count(*), sum(hops) FROM lineage_hop_summary")
    assert int(counted) == 20 * 23 and int(rows) < 20 * 23 / 2  # a few rows per batch
    rules = summarized(store)[1]
    assert set(rules) == {"provenance_missing", "leak_test", '["rule", "with JSON"]'}
    store.append(hostile_batch(20, partition=0))
    assert_summary_is_exact(store, 21 * 23)


def test_a_store_written_before_the_summary_gets_it_counted_from_its_hops_once(
    store: LineageStore, store_url: str, run_sql: RunSql
) -> None:
    for n in range(8):
        store.append(hostile_batch(n, partition=n % 2))
    for table in ("lineage_hop_summary", "lineage_leak_checks", "lineage_leak_counts"):
        run_sql(f"DROP TABLE {table}")  # as a store written by an earlier lineage-guard
    with open_store(store_url, create=False) as audit:
        assert not audit.has_summary()  # an audit does not write
    with open_store(store_url) as guard:  # opened for writing: counted from the hops
        assert guard.has_summary()
        assert_summary_is_exact(guard, 8 * 23)
        assert guard.fill_summary() is None  # once
        guard.append(hostile_batch(8, partition=0))
        assert_summary_is_exact(guard, 9 * 23)
    run_sql("DROP TABLE lineage_hop_summary")
    with open_store(store_url, create=False) as console:  # what `serve` does on such a store
        assert console.fill_summary() == 9 * 23
        assert_summary_is_exact(console, 9 * 23)


def test_leak_counts_are_kept_with_their_time_and_per_tenant(store: LineageStore) -> None:
    assert store.leak_check() is None
    filled(store, batches=2)
    first, second = T0, T0 + timedelta(minutes=5)
    store.record_leak_check(at=first, up_to_entry=1, seconds=0.5, leaks={"acme": 1})
    store.record_leak_check(
        at=second, up_to_entry=4, seconds=2.25, leaks={"acme": 2, "globex": 3, None: 4, "b": 0}
    )
    assert store.leak_check() == LeakCheck(at=second, up_to_entry=4, seconds=2.25, leaks=9)
    assert store.leak_check(tenants={"acme", "globex"}).leaks == 5  # type: ignore[union-attr]
    assert store.leak_check(tenants={"b"}).leaks == 0  # type: ignore[union-attr]
    assert store.leak_check(tenants=set()).leaks == 0  # type: ignore[union-attr]
