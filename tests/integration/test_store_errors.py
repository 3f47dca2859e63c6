"""The lineage store's errors on the real broker and PostgreSQL: a record's data is never an
outage. A hop row keeps unbounded fields bounded (`lineage.bounds`), so no input makes the
store refuse a row."""

from __future__ import annotations

import json
import random
import string
import uuid
from collections.abc import Iterator

import pytest

from lineage_guard.generate import CONTACT, generate
from lineage_guard.io.decode import encode_single_object
from lineage_guard.lineage.bounds import ID_LIMIT, digest_id, stored_id
from tests.integration import faults_table
from tests.integration.kafka_helpers import (
    committed,
    drain,
    end_offsets,
    guard_args,
    guard_cli,
    new_topics,
    produce,
)


def test_a_ten_thousand_character_record_id_is_quarantined_and_traceable(
    kafka_bootstrap: str, pg_store_url: str, request: pytest.FixtureRequest
) -> None:
    """Issue 19.1: PostgreSQL refused the index row of such an id; the guard waited 300 s,
    exited 4 and delivered nothing, and every rerun did the same."""
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    generated = list(generate(30, seed=1901, entities=(CONTACT,)))
    long_id = "".join(random.Random(1901).choices(string.ascii_letters + "éü東", k=10_000))
    generated[7].record["record_id"] = long_id
    generated[7].record["tenant_id"] = "t" * 20_000
    sent = [(None, encode_single_object(g.record, g.schema), []) for g in generated]
    produce(kafka_bootstrap, src, sent)

    args = [*guard_args(kafka_bootstrap, src, out, quarantine, f"g-{src}")]
    result = guard_cli(*args, "--lineage-store", pg_store_url, timeout=150)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "read 30, allowed 29, quarantined 1" in result.stderr, result.stderr
    assert len(drain(kafka_bootstrap, out)) == 29
    [stopped] = drain(kafka_bootstrap, quarantine)
    assert stopped.offset == 0 and stopped.value == sent[7][1]
    assert committed(kafka_bootstrap, f"g-{src}", src) == end_offsets(kafka_bootstrap, src)

    trace = guard_cli(
        "lineage", "trace", long_id, "--lineage-store", pg_store_url, "--format", "json"
    )
    assert trace.returncode == 0, trace.stderr
    events = json.loads(trace.stdout)["events"]
    assert {e["record_id"] for e in events} == {stored_id(long_id)}
    assert len(stored_id(long_id)) == ID_LIMIT
    assert [(e["stage"], e["decision"]) for e in events][-2:] == [
        ("validate", "quarantined"),
        ("write", "quarantined"),
    ]
    assert [r["rule"] for r in events[-1]["reasons"]] == ["record_id_not_uuid"]
    assert all(len(e["tenant_id"]) == 256 for e in events)
    verify = guard_cli("lineage", "verify", "--lineage-store", pg_store_url)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    again = guard_cli(*args, "--lineage-store", pg_store_url, timeout=150)
    assert again.returncode == 0 and "read 0," in again.stderr, again.stderr
    faults_table.record(
        "record_id_10000_characters",
        {
            "fault": "10,000-character record_id (PostgreSQL store)",
            "records_in": 30, "out": 29, "quarantined": 1, "duplicates": 0, "lost": 0,
            "messages": 30, **faults_table.lineage_figures(pg_store_url),
            "command": f"python3 -m pytest {request.node.nodeid}",
            "notes": "quarantined as record_id_not_uuid; kept as its first 64 characters +"
            " sha256; `trace` of the full id finds it; the rerun reads 0",
        },
    )  # fmt: skip


@pytest.fixture
def latin1_store_url(pg_dsn: str) -> Iterator[str]:
    """A lineage store in a database of its own whose encoding is LATIN1 (as older
    deployments have): it cannot hold characters outside Latin-1."""
    import psycopg
    from psycopg import sql

    name = f"lg_latin1_{uuid.uuid4().hex}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'"
                " TEMPLATE template0"
            ).format(sql.Identifier(name))
        )
    base, _, query = pg_dsn.partition("?")
    yield f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_row_the_store_refuses_quarantines_its_record_and_the_partition_moves_on(
    kafka_bootstrap: str, latin1_store_url: str, request: pytest.FixtureRequest
) -> None:
    """A record whose hop holds a character the database cannot store is that record's
    fault: it goes to quarantine (`lineage_refused`, stage `write`), the other records are
    delivered, the offsets move past it. Before, the guard retried it as an outage (exit 4
    after 300 s, nothing delivered, every rerun the same)."""
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    generated = list(generate(30, seed=1902, entities=(CONTACT,)))
    generated[11].record["tenant_id"] = "東京-tenant"
    sent = [(None, encode_single_object(g.record, g.schema), []) for g in generated]
    produce(kafka_bootstrap, src, sent)
    refused_id = generated[11].record["record_id"]

    args = guard_args(kafka_bootstrap, src, out, quarantine, f"g-{src}")
    result = guard_cli(*args, "--lineage-store", latin1_store_url, timeout=150)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "read 30, allowed 29, quarantined 1" in result.stderr, result.stderr
    assert len(drain(kafka_bootstrap, out)) == 29
    [stopped] = drain(kafka_bootstrap, quarantine)
    assert stopped.value == sent[11][1]
    reasons = json.loads(stopped.header("lineage-guard.reasons") or b"[]")
    assert [r["rule"] for r in reasons] == ["lineage_refused"]
    assert "LATIN1" in reasons[0]["message"], reasons
    assert stopped.header("lineage-guard.stage") == b"write"
    assert committed(kafka_bootstrap, f"g-{src}", src) == end_offsets(kafka_bootstrap, src)

    trace = guard_cli(
        "lineage", "trace", refused_id, "--lineage-store", latin1_store_url, "--format", "json"
    )
    assert trace.returncode == 0, trace.stderr
    events = json.loads(trace.stdout)["events"]
    assert {e["record_id"] for e in events} == {digest_id(refused_id)}
    assert (events[-1]["stage"], events[-1]["decision"]) == ("write", "quarantined")
    assert [r["rule"] for r in events[-1]["reasons"]] == ["lineage_refused"]
    assert events[-1]["tenant_id"] is None
    verify = guard_cli("lineage", "verify", "--lineage-store", latin1_store_url)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    faults_table.record(
        "row_refused_by_the_store",
        {
            "fault": "a row the store refuses (LATIN1 database, tenant `東京-tenant`)",
            "records_in": 30, "out": 29, "quarantined": 1, "duplicates": 0, "lost": 0,
            "messages": 30, **faults_table.lineage_figures(latin1_store_url),
            "command": f"python3 -m pytest {request.node.nodeid}",
            "notes": "that record quarantined (lineage_refused, stage write); the others"
            " delivered; offsets at the end",
        },
    )  # fmt: skip
