"""The `LineageStore` contract on SQLite, plus what only the SQLite store does."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

# The contract suite is a plain module: have pytest rewrite its asserts for clear failures.
pytest.register_assert_rewrite("tests.lineage_contract")

from lineage_guard.lineage.errors import ConfigError  # noqa: E402
from lineage_guard.lineage.store import LineageStore, open_store  # noqa: E402
from lineage_guard.lineage.stores import sqlite as sqlite_store  # noqa: E402
from lineage_guard.lineage.stores.sql import SELECT_HOPS, SUSPECTS  # noqa: E402
from lineage_guard.lineage.stores.sqlite import KEY_LEVELS, SqliteStore, record_key  # noqa: E402
from tests.lineage_contract import *  # noqa: E402, F403 (the contract suite runs here)
from tests.lineage_contract import (  # noqa: E402
    CHAIN,
    KEY,
    PIPELINE,
    RUN,
    T0,
    RunSql,
    batch,
    filled,
    hop,
    signed,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "lineage.db"


@pytest.fixture
def store_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"  # an absolute path: four slashes


@pytest.fixture
def store(store_url: str) -> Iterator[LineageStore]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def run_sql(db_path: Path) -> RunSql:
    def run(statement: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(db_path)
        try:
            with conn:
                return conn.execute(statement).fetchall()
        finally:
            conn.close()

    return run


def test_opening_creates_the_file_and_its_folders_in_wal_mode(
    db_path: Path, store: LineageStore, run_sql: RunSql
) -> None:
    assert isinstance(store, SqliteStore)
    assert db_path.is_file()
    assert run_sql("PRAGMA journal_mode") == [("wal",)]
    tables = run_sql("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    assert tables == [
        ("lineage_chains",),
        ("lineage_checkpoints",),
        ("lineage_entries",),
        ("lineage_hop_keys_0",),
        ("lineage_hop_keys_1",),
        ("lineage_hop_keys_2",),
        ("lineage_hop_summary",),
        ("lineage_hops",),
        ("lineage_leak_checks",),
        ("lineage_leak_counts",),
    ]
    indexes = run_sql(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name"
    )
    assert indexes == [
        ("lineage_entries_at",),
        ("lineage_entries_chain_seq",),
        ("lineage_entries_confirms",),
        ("lineage_entries_position",),
        ("lineage_hops_failed_validation",),
        ("lineage_hops_unproductive",),
        ("lineage_leak_checks_at",),
        ("lineage_leak_counts_at",),
    ]
    assert run_sql("PRAGMA user_version") == [(3,)]


def test_the_leak_query_reads_its_partial_indexes_made_in_older_stores_too(
    store_url: str, run_sql: RunSql
) -> None:
    """`queries.leaks` finds its suspects through two partial indexes of the few rows they
    select (no scan of the delivered hops for the origin); a store written before them gets
    them when it is opened to write."""
    open_store(store_url).close()
    run_sql("DROP INDEX lineage_hops_unproductive")
    run_sql("DROP INDEX lineage_hops_failed_validation")
    open_store(store_url).close()
    plan = " | ".join(row[3] for row in run_sql(f"EXPLAIN QUERY PLAN {SUSPECTS}"))
    assert "SCAN h USING INDEX lineage_hops_unproductive" in plan
    assert "SEARCH v USING INDEX lineage_hops_failed_validation (record_id=? AND digest=?)" in plan


def test_a_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///.lineage-guard/lineage.db") as store:
        store.append(batch([hop("a", 0)]))
        assert store.url == "sqlite:///.lineage-guard/lineage.db"
    assert (tmp_path / ".lineage-guard" / "lineage.db").is_file()
    with open_store("sqlite:///.lineage-guard/lineage.db", create=False) as again:
        assert len(again.trace("a")) == 5  # the five stages, derived from one hop


def test_hops_are_found_through_the_key_levels_and_the_hops_primary_key(
    store: LineageStore, run_sql: RunSql
) -> None:
    assert isinstance(store, SqliteStore)
    store.append(batch([hop("a", 0)]))
    source, where, params = store._hops_of(["a", "b"])
    query = SELECT_HOPS.replace("FROM lineage_hops h", f"FROM {source}", 1) + f" WHERE {where}"
    conn = sqlite3.connect(store.path)
    try:
        plan = [str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params)]
    finally:
        conn.close()
    assert not [step for step in plan if step.startswith("SCAN") and "SUBQUERY" not in step]
    for level in KEY_LEVELS:
        assert f"SEARCH {level} USING PRIMARY KEY (record_key=?)" in plan, plan
    assert "SEARCH h USING PRIMARY KEY (entry_id=? AND idx=?)" in plan, plan


def test_a_runs_counts_read_only_that_runs_hops(
    store: LineageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary of a run (`run_counts`) finds the run's entries, then their hops by primary
    key: a store holding millions of other runs' hops is not scanned at every run's end."""
    assert isinstance(store, SqliteStore)
    store.append(batch([hop("a", 0)]))
    store.append(batch([hop("b", 1)], run_id="another-run"))
    asked: list[tuple[str, Any]] = []
    fetchall = store._fetchall
    monkeypatch.setattr(
        store,
        "_fetchall",
        lambda query, params: asked.append((query, params)) or fetchall(query, params),
    )
    assert sum(row.count for row in store.run_counts(PIPELINE, RUN)) == 1
    [(query, params)] = asked
    conn = sqlite3.connect(store.path)
    try:
        plan = [str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params)]
    finally:
        conn.close()
    assert "SEARCH h USING PRIMARY KEY (entry_id=?)" in plan, plan
    assert not [step for step in plan if step.startswith("SCAN h")], plan


def test_keys_move_down_the_levels_and_every_hop_stays_found(
    store: LineageStore, run_sql: RunSql, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "LEVEL_ROWS", (4, 8))
    levels = [f"SELECT count(*) FROM {level}" for level in KEY_LEVELS]
    sizes = []
    for n in range(7):  # batches of 3 hops, one without a record id
        hops = [hop(f"r{n}-{i}", 3 * n + i, content_class="SYNTHETIC") for i in range(2)]
        store.append(batch([*hops, hop(None, 3 * n + 2)]))
        sizes.append(tuple(run_sql(q)[0][0] for q in levels))
    # Level 0 is merged when it holds 4 keys, level 1 when it holds 8.
    assert sizes == [(2, 0, 0), (0, 4, 0), (2, 4, 0), (0, 0, 8), (2, 0, 8), (0, 4, 8), (2, 4, 8)]
    ids = [f"r{n}-{i}" for n in range(7) for i in range(2)]
    assert [h.hop.record_id for h in store.hops(ids)] == ids
    assert store.content_classes([*ids, "unknown"]) == dict.fromkeys(ids, "SYNTHETIC")
    assert store.verify().ok


def test_a_reopened_store_counts_its_levels_again(
    store_url: str, run_sql: RunSql, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "LEVEL_ROWS", (4, 100))
    for n in range(2):
        with open_store(store_url) as store:
            store.append(batch([hop(f"r{n}-{i}", 3 * n + i) for i in range(3)]))
    assert run_sql(f"SELECT count(*) FROM {KEY_LEVELS[0]}") == [(0,)]
    assert run_sql(f"SELECT count(*) FROM {KEY_LEVELS[1]}") == [(6,)]


def test_keys_told_apart_by_the_record_id(store: LineageStore, run_sql: RunSql) -> None:
    """Two ids under one key (forced here by an edit): each lookup keeps only its own."""
    store.append(batch([hop("a", 0), hop("b", 1)]))
    run_sql(
        f"UPDATE {KEY_LEVELS[0]} SET record_key = {record_key('a')}"
        f" WHERE record_key = {record_key('b')}"
    )
    shared = f"SELECT count(*) FROM {KEY_LEVELS[0]} WHERE record_key = {record_key('a')}"
    assert run_sql(shared) == [(2,)]
    assert [h.hop.record_id for h in store.hops(["a"])] == ["a"]
    assert store.content_classes(["a"]) == {"a": "SYNTHETIC"}
    assert record_key("a") == int.from_bytes(hashlib.sha256(b"a").digest()[:8], "big", signed=True)


def _as_version_2(run_sql: RunSql) -> None:
    """The store as lineage-guard wrote it before the key levels: a `record_id` index."""
    for level in KEY_LEVELS:
        run_sql(f"DROP TABLE {level}")
    run_sql("CREATE INDEX lineage_hops_record_id ON lineage_hops (record_id)")
    run_sql("PRAGMA user_version = 2")


def test_a_version_2_store_is_read_as_it_is_and_converted_when_opened_to_write(
    store_url: str, run_sql: RunSql
) -> None:
    with open_store(store_url) as store:
        entries = filled(store)
        signed(store)
        before = [(e.seq, e.root, e.hash) for e in entries]
        traced = store.trace("r5")
        classes = store.content_classes(["r5", "r6"])
    _as_version_2(run_sql)
    with open_store(store_url, create=False) as reader:
        assert reader.trace("r5") == traced
        assert (
            reader.content_classes(["r5", "r6"])
            == classes
            == dict.fromkeys(["r5", "r6"], "SYNTHETIC")
        )
        assert reader.verify(public_key=KEY.public_key()).ok
    assert run_sql("PRAGMA user_version") == [(2,)]  # an audit changes nothing
    with open_store(store_url) as writer:
        assert run_sql("PRAGMA user_version") == [(3,)]
        assert run_sql(f"SELECT count(*) FROM {KEY_LEVELS[2]}") == [(12,)]
        assert run_sql("SELECT name FROM sqlite_master WHERE name LIKE '%record_id%'") == []
        assert writer.trace("r5") == traced
        added = writer.append(batch([hop("r5", 12)], at=T0 + timedelta(seconds=5)))
        assert [(h.seq, h.index) for h in writer.hops(["r5"])] == [(3, 1), (added.seq, 0)]
        assert writer.verify(public_key=KEY.public_key()).ok
        assert [(e.seq, e.root, e.hash) for e in entries] == before


@pytest.mark.parametrize("version", [1, 4])
def test_a_store_of_a_schema_version_it_cannot_read_is_a_config_error(
    store_url: str, run_sql: RunSql, version: int
) -> None:
    with open_store(store_url) as store:
        store.append(batch([hop("a", 0)]))
    run_sql(f"PRAGMA user_version = {version}")
    for create in (True, False):
        with pytest.raises(ConfigError) as raised:
            open_store(store_url, create=create)
        assert raised.value.message == (
            f"The lineage store `{store_url}` has schema version {version}; this lineage-guard"
            " reads versions 2 to 3. Use a new store file."
        )


def test_an_append_writes_as_many_pages_at_110k_hops_as_at_10k(
    store: LineageStore, db_path: Path
) -> None:
    """Random record ids: a single index on them took each append's keys into pages all over
    it (1,257 pages per 2000-hop append at 110,000 hops, 250 at 10,000)."""

    def append(n: int) -> None:
        ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(2000)]
        store.append(batch([hop(rid, 2000 * n + i) for i, rid in enumerate(ids)]))

    def pages_written(n: int) -> int:
        conn = sqlite3.connect(db_path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        append(n)
        return (wal.stat().st_size - 32) // (24 + 4096)  # a WAL frame per page written

    rng = random.Random(5)
    wal = db_path.with_name(db_path.name + "-wal")
    for n in range(5):  # 10,000 hops
        append(n)
    at_10k = pages_written(5)
    for n in range(6, 55):  # 110,000 hops: level 0 holds as many keys as at 10,000
        append(n)
    at_110k = pages_written(55)
    assert 0 < at_110k <= 1.2 * at_10k, (at_10k, at_110k)


def test_audits_do_not_create_a_missing_store(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "lineage.db"
    with pytest.raises(ConfigError) as raised:
        open_store(f"sqlite:///{missing}", create=False)
    assert raised.value.message == (
        f"The lineage store `sqlite:///{missing}` does not exist or holds no lineage tables:"
        " check `--lineage-store`, or run the guard first."
    )
    assert not missing.parent.exists()


def test_a_file_that_is_no_database_is_a_config_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not an SQLite database, just some bytes" * 100)
    with pytest.raises(ConfigError) as raised:  # waiting would not help: no retries
        open_store(f"sqlite:///{junk}")
    assert raised.value.message == (
        f"Cannot open the lineage store `sqlite:///{junk}`: file is not a database."
        " Check `--lineage-store` and that the file is a readable SQLite database."
    )
    assert raised.value.exit_code == 3


def test_a_folder_in_the_way_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "lineage.db").mkdir()
    with pytest.raises(ConfigError, match="Cannot open the lineage store"):
        open_store(f"sqlite:///{tmp_path / 'lineage.db'}")


def test_a_store_read_only_to_its_writer_fails_the_append(store_url: str, db_path: Path) -> None:
    with open_store(store_url) as store:
        store.append(batch([hop("a", 0), hop("a2", 1)]))
    reader = SqliteStore(db_path)
    try:
        reader._conn.execute("PRAGMA query_only = ON")  # the connection refuses writes
        with pytest.raises(ConfigError) as raised:  # SQLITE_READONLY: not an outage
            reader.append(batch([hop("b", 2)]))
        assert raised.value.message.startswith(
            f"Cannot write 1 lineage hops to chain `{CHAIN}` in `{store_url}`: "
        )
        assert reader.trace("b") == []
        assert [(h.seq, h.index) for h in reader.hops(["a", "a2"])] == [(1, 0), (1, 1)]
    finally:
        reader.close()


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///", "sqlite://host/x.db", "sqlite:///dir/", "sqlite:///x.db?mode=ro"],
)
def test_bad_sqlite_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="Bad lineage store URL"):
        open_store(url)


@pytest.mark.parametrize(
    ("edit", "kind"),
    [
        ("source_offset = 'five'", "unreadable"),
        ("source_offset = source_offset + 0.5", "unreadable"),
        ("tenant_id = 5", "edited"),  # TEXT affinity: stored as '5', a changed value
        ("digest = hex(digest)", "unreadable"),
        ("record_id = CAST(record_id AS BLOB)", "unreadable"),
        ("outcome = 'quarantined'", "edited"),
    ],
)
def test_an_edit_of_only_a_columns_type_is_detected_by_verify_and_trace(
    store: LineageStore, run_sql: RunSql, edit: str, kind: str
) -> None:
    """SQLite keeps most values in the type it is given: a value rewritten as another type
    must not pass the fast leaf check (`stored_leaf`) that verify tries first."""
    from tests.lineage_contract import filled

    filled(store)
    run_sql(f"UPDATE lineage_hops SET {edit} WHERE record_id = 'r5'")
    result = store.verify()
    assert result.broken is not None and str(result.broken.kind) == kind, result.broken
    assert result.broken.seq == 3
    assert store.verify_batches(CHAIN, [3])[3] is not None
    assert store.verify_batches(CHAIN, [1]) == {1: None}
