"""The `LineageStore` contract on a real PostgreSQL, plus what only the PostgreSQL store does.

Each test gets a schema of its own (`search_path` set through the URL's libpq `options`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

# The contract suite is a plain module: have pytest rewrite its asserts for clear failures.
pytest.register_assert_rewrite("tests.lineage_contract")

from lineage_guard.lineage.errors import ConfigError, ServiceUnavailableError  # noqa: E402
from lineage_guard.lineage.events import Decision  # noqa: E402
from lineage_guard.lineage.store import LineageStore, open_store  # noqa: E402
from lineage_guard.lineage.stores.postgres import PostgresStore  # noqa: E402
from lineage_guard.lineage.stores.sql import SUSPECTS, Admission  # noqa: E402
from tests.integration.pg_waits import server_waits  # noqa: E402
from tests.lineage_contract import *  # noqa: E402, F403 (the contract suite runs here)
from tests.lineage_contract import CHAIN, T0, RunSql, batch, filled, hop  # noqa: E402


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    name = f"lg_{uuid4().hex}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def app_name() -> str:
    return f"lg-test-{uuid4().hex[:12]}"


@pytest.fixture
def store_url(pg_dsn: str, schema: str, app_name: str) -> str:
    separator = "&" if "?" in pg_dsn else "?"
    return f"{pg_dsn}{separator}options=-csearch_path%3D{schema}&application_name={app_name}"


@pytest.fixture
def store(store_url: str) -> Iterator[LineageStore]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def run_sql(pg_dsn: str, schema: str) -> RunSql:
    def run(statement: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(pg_dsn, autocommit=True, options=f"-c search_path={schema}") as conn:
            cursor = conn.execute(statement.encode())
            return cursor.fetchall() if cursor.description else []

    return run


def test_tables_and_indexes_are_created_in_the_urls_schema(
    store: LineageStore, run_sql: RunSql, schema: str
) -> None:
    assert isinstance(store, PostgresStore)
    tables = run_sql(
        f"SELECT tablename FROM pg_tables WHERE schemaname = '{schema}' ORDER BY tablename"
    )
    assert tables == [
        ("lineage_chains",),
        ("lineage_checkpoints",),
        ("lineage_entries",),
        ("lineage_hop_summary",),
        ("lineage_hops",),
        ("lineage_leak_checks",),
        ("lineage_leak_counts",),
    ]
    indexes = run_sql(
        f"SELECT indexname FROM pg_indexes WHERE schemaname = '{schema}'"
        " AND tablename IN ('lineage_entries', 'lineage_hops') ORDER BY indexname"
    )
    assert indexes == [
        ("lineage_entries_at",),
        ("lineage_entries_chain_id_seq_key",),
        ("lineage_entries_confirms",),
        ("lineage_entries_pkey",),
        ("lineage_entries_position",),
        ("lineage_hops_failed_validation",),
        ("lineage_hops_pkey",),
        ("lineage_hops_record_id_hash",),
        ("lineage_hops_unproductive",),
    ]


def test_the_leak_query_reads_its_partial_indexes(
    store: LineageStore, pg_dsn: str, schema: str
) -> None:
    store.append(batch([hop("a", 0)]))
    with psycopg.connect(pg_dsn, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute("ANALYZE lineage_hops")
        conn.execute("SET enable_seqscan = off")  # a tiny table is best read whole
        plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {SUSPECTS}").fetchall())
    assert "using lineage_hops_unproductive on lineage_hops h" in plan
    assert "using lineage_hops_failed_validation on lineage_hops v" in plan


def test_trace_uses_the_record_id_hash_index(store: LineageStore, pg_dsn: str, schema: str) -> None:
    store.append(batch([hop("a", 0)]))
    with psycopg.connect(pg_dsn, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute("ANALYZE lineage_hops")
        # A tiny table is best read whole; without that choice the plan must use the index.
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(
            "EXPLAIN SELECT * FROM lineage_hops WHERE record_id IN ('a', 'b')"
        ).fetchall()
    text = "\n".join(row[0] for row in plan)
    assert "Index Scan using lineage_hops_record_id_hash" in text or (
        "Bitmap Index Scan on lineage_hops_record_id_hash" in text
    ), text


def test_lookups_by_record_id_probe_the_index_on_a_store_never_analyzed(
    store: PostgresStore, pg_dsn: str, schema: str
) -> None:
    """A store filling in its first run has no statistics until autovacuum analyzes it: the
    store's own queries by record id (a trace, the guard's parent lookups) must still probe
    the index, not read every hop for each lookup."""
    with psycopg.connect(pg_dsn, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute("ALTER TABLE lineage_hops SET (autovacuum_enabled = false)")
    for b in range(4):
        store.append(batch([hop(f"r{b}-{i}", b * 5000 + i) for i in range(5000)]))
    wanted = [f"r{b}-{i}" for b in range(4) for i in range(0, 5000, 97)]
    hops, where, params = store._hops_of(wanted)
    query = f"SELECT DISTINCT h.record_id, h.content_class FROM {hops} WHERE {where}"
    with psycopg.connect(pg_dsn, autocommit=True, options=f"-c search_path={schema}") as conn:
        analyzed = conn.execute(
            "SELECT reltuples FROM pg_class WHERE oid = 'lineage_hops'::regclass"
        ).fetchone()
        assert analyzed == (-1.0,)  # never analyzed, as the test means
        plan = conn.execute(f"EXPLAIN {store._q(query)}", params).fetchall()
    text = "\n".join(row[0] for row in plan)
    assert "Seq Scan on lineage_hops" not in text, text
    assert "lineage_hops_record_id_hash" in text, text
    assert store.content_classes(wanted) == dict.fromkeys(wanted, "SYNTHETIC")


def test_an_earlier_stores_record_id_b_tree_becomes_the_hash_index(
    store_url: str, run_sql: RunSql, schema: str
) -> None:
    with open_store(store_url) as store:
        entries = filled(store)
    run_sql("DROP INDEX lineage_hops_record_id_hash")
    run_sql("CREATE INDEX lineage_hops_record_id ON lineage_hops (record_id)")  # as before
    with open_store(store_url, create=False) as reader:
        assert [h.hop.record_id for h in reader.hops(["r5", "r6"])] == ["r5", "r6"]
    with open_store(store_url) as writer:
        assert [h.hop.record_id for h in writer.hops(["r5", "r6"])] == ["r5", "r6"]
        assert writer.verify().ok
        seqs = [e.seq for e in entries]
        assert writer.verify_batches(CHAIN, seqs) == dict.fromkeys(seqs)
    indexes = run_sql(
        f"SELECT indexname FROM pg_indexes WHERE schemaname = '{schema}'"
        " AND tablename = 'lineage_hops' ORDER BY indexname"
    )
    assert indexes == [
        ("lineage_hops_failed_validation",),
        ("lineage_hops_pkey",),
        ("lineage_hops_record_id_hash",),
        ("lineage_hops_unproductive",),
    ]


def test_the_store_reconnects_after_its_connection_is_killed(
    store: LineageStore, run_sql: RunSql, app_name: str
) -> None:
    store.append(batch([hop("before", 0)]))
    killed = run_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE application_name = '{app_name}'"
    )
    assert killed == [(True,)]

    with pytest.raises(ServiceUnavailableError) as raised:
        store.append(batch([hop("lost", 1)]))
    assert raised.value.message.startswith(f"Cannot write 1 lineage hops to chain `{CHAIN}`")

    store.append(batch([hop("after", 2)]))  # reconnected
    assert store.trace("lost") == []
    assert [h.seq for h in store.hops(["after"])] == [2]
    assert store.verify().ok


def test_an_unreachable_server_is_unavailable_and_the_password_is_not_shown(
    unused_port: int,
) -> None:
    url = f"postgresql://auditor:s3cret@127.0.0.1:{unused_port}/lineage_guard"
    with pytest.raises(ServiceUnavailableError) as raised:
        open_store(url)
    message = raised.value.message
    assert message.startswith(
        f"Cannot reach the lineage store `postgresql://auditor:***@127.0.0.1:{unused_port}"
        "/lineage_guard`: "
    )
    assert "s3cret" not in message
    assert "\n" not in message


def test_an_unknown_url_option_is_a_config_error(pg_dsn: str) -> None:
    separator = "&" if "?" in pg_dsn else "?"
    with pytest.raises(ConfigError, match="Bad lineage store URL"):
        open_store(f"{pg_dsn}{separator}colour=blue")


def test_a_search_path_without_a_schema_is_a_config_error(pg_dsn: str) -> None:
    """No schema to create the tables in: a setting to fix (exit 3), not an outage to wait
    out (exit 4)."""
    separator = "&" if "?" in pg_dsn else "?"
    url = f"{pg_dsn}{separator}options=-csearch_path%3Dno_such_schema_here"
    with pytest.raises(ConfigError, match="no schema has been selected") as caught:
        open_store(url)
    assert "search_path" in str(caught.value) and "\n" not in str(caught.value)


def test_audits_do_not_create_tables(store_url: str, run_sql: RunSql) -> None:
    with pytest.raises(ConfigError, match="holds no lineage tables"):
        open_store(store_url, create=False)
    assert run_sql("SELECT to_regclass('lineage_hops') IS NULL") == [(True,)]


def test_two_stores_on_one_database_share_chains(store: LineageStore, store_url: str) -> None:
    with open_store(store_url) as second:
        store.append(batch([hop("a", 0)]))
        second.append(batch([hop("b", 1)]))
        store.append(batch([hop("c", 0)], partition=1))
        assert [h.seq for h in second.hops(["a"])] == [1]
        assert [h.seq for h in store.hops(["b"])] == [2]
        result = second.verify()
        assert (result.ok, result.chains, result.batches, result.hops) == (True, 2, 3, 3)


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_waits(store: PostgresStore, tmp_path: Path, admissions: list[Admission]) -> int:
    """How many times `store.admit(admissions)` waited for the server."""
    with server_waits(store._connection(), tmp_path / "libpq.trace") as waits:
        store.admit(admissions, at=T0)
    return waits[0]


def test_a_group_of_admissions_waits_for_the_server_a_few_times(
    store: LineageStore, tmp_path: Path
) -> None:
    """The gateway's group commit (`admit`) of 10 requests of one client (one chain), each
    with its `Idempotency-Key` (a retry's run: its hops are looked for first): its statements
    go pipelined, BEGIN and COMMIT with them, the chain's head is read and written once and
    no entry's id is waited for, so the writer waits for the server 12 times (the head, each
    request's lookup, the commit), where it waited 149 times (each statement, each request's
    head read twice, its hops copied), then 24."""
    assert isinstance(store, PostgresStore)
    admissions = [
        Admission(batch=batch([hop(f"r{i}", i)], run_id=f"run-{i}"), confirmed=True)
        for i in range(10)
    ]
    assert _server_waits(store, tmp_path, admissions) == 12
    assert [store.trace(f"r{i}")[-1].event.decision for i in range(10)] == [Decision.DELIVERED] * 10
    assert store.verify().ok


def test_a_group_of_new_runs_waits_for_the_server_twice(
    store: LineageStore, tmp_path: Path
) -> None:
    """Requests without an `Idempotency-Key` (`new_run`: a run id never used, nothing to look
    for): 10 of them in one group commit wait for the server twice, for the chain's head and
    for the commit (24 times before: BEGIN, each lookup, each entry's id, the commit), and
    their hops are kept under their entries as when written alone."""
    assert isinstance(store, PostgresStore)
    store.append(batch([hop("before", 0)], run_id="run-before"))  # the head moves on from it
    admissions = [
        Admission(batch=batch([hop(f"r{i}", i), hop(f"s{i}", i)], run_id=f"run-{i}"),
                  confirmed=True, new_run=True)
        for i in range(10)
    ]  # fmt: skip
    assert _server_waits(store, tmp_path, admissions) == 2
    for i in range(10):
        assert [h.seq for h in store.hops([f"r{i}", f"s{i}"])] == [2 + 2 * i] * 2
        assert store.trace(f"s{i}")[-1].event.decision == Decision.DELIVERED
    result = store.verify()
    assert (result.ok, result.batches, result.hops) == (True, 21, 21)


def _new_runs(prefix: str, count: int) -> list[Admission]:
    return [
        Admission(batch=batch([hop(f"{prefix}{i}", i)], run_id=f"{prefix}-run-{i}"),
                  confirmed=True, new_run=True)
        for i in range(count)
    ]  # fmt: skip


def test_the_next_group_of_a_chain_waits_for_the_server_once(
    store: LineageStore, tmp_path: Path
) -> None:
    """The head a group of admissions committed is kept: the next group of the same chain
    does not wait to read it (a statement locks it and fails the transaction if another
    writer moved it), so it waits for the server once, for its commit."""
    assert isinstance(store, PostgresStore)
    waits = [_server_waits(store, tmp_path, _new_runs(g, 3)) for g in "abc"]
    assert waits == [2, 1, 1]
    assert [h.seq for h in store.hops(["a0", "b0", "c2"])] == [1, 7, 17]
    result = store.verify()
    assert (result.ok, result.batches, result.hops) == (True, 18, 9)


def test_a_head_another_writer_moved_is_read_again_not_forked(
    store: LineageStore, store_url: str, tmp_path: Path
) -> None:
    """Another store (another gateway, a guard) appends to the chain after this store's
    admissions: the next group finds the head it kept moved, writes nothing, and runs again
    with the head read (5 waits: its failed commit, the rollback, psycopg's `DEALLOCATE ALL`
    after it, the head, the commit): its entries follow the other writer's, the chain
    verifies, and the group after it waits once again."""
    assert isinstance(store, PostgresStore)
    store.admit(_new_runs("a", 2), at=T0)
    with open_store(store_url) as other:
        other.append(batch([hop("other", 9)], run_id="other-run"))
    assert _server_waits(store, tmp_path, _new_runs("b", 2)) == 5
    assert _server_waits(store, tmp_path, _new_runs("c", 2)) == 1
    assert [h.seq for h in store.hops(["a1", "other", "b0", "b1", "c1"])] == [3, 5, 6, 8, 12]
    result = store.verify()
    assert (result.ok, result.batches, result.hops) == (True, 13, 7)


def test_a_head_moved_while_the_group_waited_for_its_lock_is_not_forked(
    store: LineageStore, store_url: str
) -> None:
    """Another writer holds the chain's head locked, moves it and commits while the next
    group of this store waits for the lock: the group's check sees the moved head (not the
    one it kept), runs again after it, and the chain verifies."""
    assert isinstance(store, PostgresStore)
    store.admit(_new_runs("a", 1), at=T0)
    with open_store(store_url) as other:
        assert isinstance(other, PostgresStore)
        writing = other._write()
        cursor = writing.__enter__()
        try:
            other._append_in(cursor, batch([hop("other", 9)], run_id="other-run"))
            admitted: list[Any] = []
            group = threading.Thread(
                target=lambda: admitted.append(store.admit(_new_runs("b", 1), at=T0))
            )
            group.start()
            group.join(1.0)
            assert group.is_alive()  # waiting for the head's lock
        finally:
            writing.__exit__(None, None, None)  # commits
        group.join(30)
    assert [e.seq for e in admitted[0]] == [4]
    assert [h.seq for h in store.hops(["a0", "other", "b0"])] == [1, 3, 4]
    assert store.verify().ok
