"""The event model's canonical form and the hash chain, without any store."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from lineage_guard.lineage.chain import (
    BreakKind,
    ChainHead,
    UnreadableEvent,
    first_break,
    head_after,
    link,
    verify_chain,
)
from lineage_guard.lineage.events import (
    GENESIS_HASH,
    Decision,
    LineageEvent,
    Reason,
    Stage,
    StoredEvent,
    canonical_json,
    event_hash,
    format_time,
)

AT = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)


def make(record_id: str | None = "r1", **fields: object) -> LineageEvent:
    values: dict[str, object] = {
        "record_id": record_id,
        "stage": Stage.VALIDATE,
        "pipeline": "crm-guard",
        "run_id": "run-1",
        "at": AT,
        "decision": Decision.QUARANTINED,
        "reasons": (Reason(rule="generator_required", message="No générateur."),),
        "content_class": "SYNTHETIC",
        "origin_env": "TEST",
        "tenant_id": "acme",
        "source_system": "faker",
        "generator": None,
        "parent_record_ids": ("p1",),
        "source_topic": "crm.contacts",
        "source_partition": 2,
        "source_offset": 41,
        "destination": None,
    }
    values.update(fields)
    return LineageEvent(**values)  # type: ignore[arg-type]


CANONICAL = (
    '{"at":"2026-11-27T12:00:00.123Z","chain_id":"run-1/crm.contacts/2","content_class":"SYNTHETIC",'
    '"decision":"quarantined","destination":null,"generator":null,"origin_env":"TEST",'
    '"parent_record_ids":["p1"],"pipeline":"crm-guard",'
    '"reasons":[{"message":"No générateur.","rule":"generator_required"}],"record_id":"r1",'
    '"run_id":"run-1","seq":7,"source_offset":41,"source_partition":2,'
    '"source_system":"faker","source_topic":"crm.contacts","stage":"validate","tenant_id":"acme"}'
)


def test_canonical_json_is_sorted_compact_utf8_with_millisecond_utc_times() -> None:
    assert canonical_json(make(), chain_id="run-1/crm.contacts/2", seq=7) == CANONICAL.encode()


def test_the_hash_covers_the_previous_hash_and_the_canonical_event() -> None:
    prev = "ab" * 32
    expected = hashlib.sha256(prev.encode() + CANONICAL.encode()).hexdigest()
    assert event_hash(make(), chain_id="run-1/crm.contacts/2", seq=7, prev_hash=prev) == expected


def test_times_are_kept_in_utc_to_the_millisecond() -> None:
    local = datetime(2026, 11, 27, 13, 0, 0, 999999, tzinfo=timezone(timedelta(hours=1)))
    event = make(at=local)
    assert event.at == datetime(2026, 11, 27, 12, 0, 0, 999000, tzinfo=UTC)
    assert event.at.tzinfo is UTC
    assert format_time(event.at) == "2026-11-27T12:00:00.999Z"


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make(at=datetime(2026, 11, 27, 12, 0))


def test_stage_and_decision_must_be_known_values() -> None:
    assert make(stage="enforce", decision="blocked").stage is Stage.ENFORCE
    with pytest.raises(ValueError, match="'teleport' is not a valid Stage"):
        make(stage="teleport")


def chain(count: int, chain_id: str = "c") -> list[StoredEvent]:
    return link(
        [make(f"r{i}", source_offset=i) for i in range(count)], chain_id=chain_id, head=None
    )


def head_of(stored: list[StoredEvent], chain_id: str = "c") -> ChainHead:
    return head_after(stored, chain_id=chain_id, head=None)


def test_link_numbers_from_one_and_links_each_event_to_the_previous() -> None:
    stored = chain(3)
    assert [s.seq for s in stored] == [1, 2, 3]
    assert stored[0].prev_hash == GENESIS_HASH == "0" * 64
    assert [s.prev_hash for s in stored[1:]] == [s.hash for s in stored[:2]]
    for s in stored:
        assert s.hash == event_hash(s.event, chain_id="c", seq=s.seq, prev_hash=s.prev_hash)


def test_link_continues_after_a_head() -> None:
    first = chain(2)
    more = link([make("r9")], chain_id="c", head=head_of(first))
    assert [(s.seq, s.prev_hash) for s in more] == [(3, first[-1].hash)]
    assert verify_chain("c", [*first, *more], head_of([*first, *more])) == (None, 3)


def test_an_intact_chain_and_an_empty_one_verify() -> None:
    stored = chain(4)
    assert verify_chain("c", stored, head_of(stored)) == (None, 4)
    empty = ChainHead(chain_id="c", seq=0, hash=GENESIS_HASH)
    assert verify_chain("c", [], empty) == (None, 0)


def test_an_edited_event_breaks_at_itself() -> None:
    stored = chain(4)
    edited = dataclasses.replace(
        stored[1], event=dataclasses.replace(stored[1].event, decision=Decision.DELIVERED)
    )
    found, _ = verify_chain("c", [stored[0], edited, *stored[2:]], head_of(stored))
    assert found is not None
    assert (found.seq, found.record_id, found.kind) == (2, "r1", BreakKind.EDITED)
    assert found.description == (
        "chain `c` seq 2 (record `r1`) does not match its hash: the event was edited after it"
        " was written"
    )


def test_a_deleted_event_breaks_at_the_gap() -> None:
    stored = chain(5)
    found, _ = verify_chain("c", [*stored[:1], *stored[3:]], head_of(stored))
    assert found is not None
    assert (found.seq, found.record_id, found.kind) == (2, None, BreakKind.DELETED)
    assert found.description == (
        "chain `c` seq 2-3 are missing: the chain jumps from seq 1 (record `r0`) to seq 4"
        " (record `r3`); deleted"
    )


def test_renumbering_after_a_deletion_breaks_the_link() -> None:
    stored = chain(4)
    renumbered = dataclasses.replace(stored[2], seq=2)
    found, _ = verify_chain("c", [stored[0], renumbered], head_of(stored))
    assert found is not None
    assert (found.seq, found.record_id, found.kind) == (2, "r2", BreakKind.RELINKED)
    assert found.description.startswith(
        "chain `c` seq 2 (record `r2`) does not link to seq 1 (record `r0`)"
    )


def test_a_repeated_seq_is_an_insertion() -> None:
    stored = chain(3)
    twin = dataclasses.replace(stored[1], event=dataclasses.replace(stored[1].event, record_id="x"))
    found, _ = verify_chain("c", [stored[0], stored[1], twin, stored[2]], head_of(stored))
    assert found is not None
    assert (found.seq, found.record_id, found.kind) == (2, "x", BreakKind.INSERTED)


def test_events_beyond_the_head_are_insertions() -> None:
    stored = chain(4)
    found, count = verify_chain("c", stored, head_of(stored[:3]))
    assert found is not None
    assert (found.seq, found.record_id, found.kind, count) == (4, "r3", BreakKind.INSERTED, 4)


def test_a_truncated_tail_breaks_at_the_first_missing_seq() -> None:
    stored = chain(4)
    found, _ = verify_chain("c", stored[:2], head_of(stored))
    assert found is not None
    assert (found.seq, found.record_id, found.kind) == (3, None, BreakKind.DELETED)
    assert found.description == (
        "chain `c` seq 3-4 are missing: the chain's head records seq 4 but its last event is"
        " seq 2 (record `r1`); deleted"
    )


def test_a_head_whose_hash_differs_breaks_at_the_last_event() -> None:
    stored = chain(2)
    head = ChainHead(chain_id="c", seq=2, hash="f" * 64)
    found, _ = verify_chain("c", stored, head)
    assert found is not None
    assert (found.seq, found.record_id, found.kind) == (2, "r1", BreakKind.HEAD)


def test_events_without_a_head_break() -> None:
    found, _ = verify_chain("c", chain(2), None)
    assert found is not None
    assert (found.seq, found.record_id, found.kind) == (2, "r1", BreakKind.HEAD)


def test_an_unreadable_row_breaks_at_itself() -> None:
    stored = chain(3)
    bad = UnreadableEvent(chain_id="c", seq=2, record_id="r1", error="`stage` is 7")
    found, _ = verify_chain("c", [stored[0], bad, stored[2]], head_of(stored))
    assert found is not None
    assert (found.seq, found.record_id, found.kind) == (2, "r1", BreakKind.UNREADABLE)
    assert found.description == (
        "chain `c` seq 2 (record `r1`) cannot be read (`stage` is 7): the event was edited"
    )


def test_first_break_walks_every_chain_and_every_head() -> None:
    a, b = chain(3, "a"), chain(2, "b")
    heads = {"a": head_of(a, "a"), "b": head_of(b, "b")}
    clean = first_break([*a, *b], heads)
    assert (clean.ok, clean.chains, clean.events) == (True, 2, 5)

    # chain "b" lost every event; only its head remains.
    lost = first_break(a, heads)
    assert lost.broken is not None
    assert (lost.broken.chain_id, lost.broken.seq, lost.broken.kind) == ("b", 1, BreakKind.DELETED)
    assert (lost.chains, lost.events) == (2, 3)

    broken_b = [b[0], dataclasses.replace(b[1], hash="0" * 64)]
    second = first_break([*a, *broken_b], heads)
    assert second.broken is not None
    assert (second.broken.chain_id, second.broken.seq) == ("b", 2)
