"""The guard on the real broker with lineage in a real PostgreSQL: per-record traces, leaks,
and a database outage in the middle of a run."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lineage_guard.generate import CONTACT, EMAIL_ACTIVITY, generate
from lineage_guard.io.decode import encode_single_object
from lineage_guard.lineage import queries
from lineage_guard.lineage.events import Decision, Stage
from lineage_guard.lineage.store import open_store
from tests.integration.kafka_helpers import (
    committed,
    drain,
    end_offsets,
    guard_args,
    guard_cli,
    new_topics,
    produce,
)
from tests.integration.services import control

PASSED, QUARANTINED, BLOCKED, DELIVERED = (
    Decision.PASSED,
    Decision.QUARANTINED,
    Decision.BLOCKED,
    Decision.DELIVERED,
)


def test_trace_shows_every_stage_as_it_happened(kafka_bootstrap: str, pg_store_url: str) -> None:
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q", partitions=2)
    generated = list(generate(240, seed=51))
    expected: dict[str, list[tuple[Stage, Decision, set[str]]]] = {}
    sent = []
    for n, g in enumerate(generated):
        record = copy.deepcopy(g.record)
        provenance = record["provenance"]
        rid = record["record_id"]
        if n % 12 == 5 and provenance["content_class"] != "HUMAN":
            provenance.update(generator=None, generated_at=None, disclosure=None)
            rules = {"generator_required", "generated_at_required"} | (
                {"disclosure_required"} if provenance["content_class"] == "SYNTHETIC" else set()
            )
            expected[rid] = [
                (Stage.SOURCE, PASSED, set()),
                (Stage.DECODE, PASSED, set()),
                (Stage.VALIDATE, QUARANTINED, rules),
                (Stage.WRITE, QUARANTINED, rules),
            ]
        elif n % 12 == 7:
            provenance["origin_env"] = "TEST"
            expected[rid] = [
                (Stage.SOURCE, PASSED, set()),
                (Stage.DECODE, PASSED, set()),
                (Stage.VALIDATE, PASSED, set()),
                (Stage.ENFORCE, BLOCKED, {"leak_test_origin"}),
                (Stage.WRITE, QUARANTINED, {"leak_test_origin"}),
            ]
        else:
            expected[rid] = [
                (s, PASSED, set())
                for s in (Stage.SOURCE, Stage.DECODE, Stage.VALIDATE, Stage.ENFORCE)
            ]
            expected[rid].append((Stage.WRITE, DELIVERED, set()))
        sent.append((rid.encode(), encode_single_object(record, g.schema), []))
    sent += [(b"junk", b"\x07garbage", []), (b"junk2", b"\xc3\x01" + b"\x01" * 8, [])]
    produce(kafka_bootstrap, src, sent, partitions=2)

    result = guard_cli(
        *guard_args(kafka_bootstrap, src, out, quarantine, "trace"),
        "--batch-size",
        "50",
        "--lineage-store",
        pg_store_url,
    )
    assert result.returncode == 0, result.stderr

    destinations = {DELIVERED: out, QUARANTINED: quarantine}
    with open_store(pg_store_url) as store:
        for rid, path in expected.items():
            events = [s.event for s in store.trace(rid)]
            assert [(e.stage, e.decision, {r.rule for r in e.reasons}) for e in events] == path
            write = events[-1]
            assert write.destination == destinations[write.decision]
            assert len({(e.source_topic, e.source_partition, e.source_offset) for e in events}) == 1
        undecodable = [s.event for s in store.events() if s.event.record_id is None]
        assert sorted((e.stage, e.decision) for e in undecodable) == sorted(
            [(Stage.SOURCE, PASSED), (Stage.DECODE, QUARANTINED), (Stage.WRITE, QUARANTINED)] * 2
        )
        # The evidence equals what happened: the confirmed deliveries are exactly the bytes
        # in the allowed topic, and nothing is left unconfirmed after a clean run.
        delivered = [s for s in store.events(stage=Stage.WRITE) if s.event.destination == out]
        assert {s.event.decision for s in delivered} == {DELIVERED}
        assert sorted(s.digest for s in delivered) == sorted(
            hashlib.sha256(m.value or b"").hexdigest() for m in drain(kafka_bootstrap, out)
        )
        report = queries.leaks(store, production_destinations={out})
        assert report.leaks == () and report.unconfirmed == ()
        blocked = {s.event.record_id for s in report.blocked}
        assert blocked == {rid for rid, path in expected.items() if path[3][1] == BLOCKED}
        assert queries.verify(store).ok


def test_database_outage_delivers_nothing_without_lineage(
    kafka_bootstrap: str, pg_dsn: str, pg_store_url: str, tmp_path: Path
) -> None:
    database = control(pg_dsn)
    if database is None:
        pytest.skip("LINEAGE_GUARD_PG_DSN names a server these tests cannot stop")
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    generated = list(generate(20000, seed=52, entities=(CONTACT, EMAIL_ACTIVITY)))
    keys = {g.record["record_id"].encode() for g in generated}
    produce(
        kafka_bootstrap,
        src,
        [
            (g.record["record_id"].encode(), encode_single_object(g.record, g.schema), [])
            for g in generated
        ],
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from lineage_guard.cli.main import main; main()",
            *guard_args(kafka_bootstrap, src, out, quarantine, "outage"),
            "--batch-size",
            "200",
            "--lineage-store",
            pg_store_url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: sum(end_offsets(kafka_bootstrap, out).values()) >= 1000)
        database.stop()
        time.sleep(5)
        during = {m.key for m in drain(kafka_bootstrap, out)}
        time.sleep(3)
        assert {m.key for m in drain(kafka_bootstrap, out)} == during, (
            "records were delivered while lineage could not be written"
        )
        assert process.poll() is None, "the guard must wait for the database, not give up"
        assert len(during) < 20000
    finally:
        database.start()
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    assert "lineage store unavailable, retrying" in stderr

    delivered = drain(kafka_bootstrap, out)
    assert {m.key for m in delivered} == keys
    assert committed(kafka_bootstrap, "outage", src) == end_offsets(kafka_bootstrap, src)
    with open_store(pg_store_url) as store:
        for key in during:
            events = store.trace(key.decode())
            assert any(
                e.event.stage == Stage.WRITE and e.event.decision == DELIVERED for e in events
            ), key
        assert queries.verify(store).ok


def _wait_for(condition: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
