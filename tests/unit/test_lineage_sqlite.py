"""The `LineageStore` contract on SQLite, plus what only the SQLite store does."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The contract suite is a plain module: have pytest rewrite its asserts for clear failures.
pytest.register_assert_rewrite("tests.lineage_contract")

from lineage_guard.lineage.errors import ConfigError  # noqa: E402
from lineage_guard.lineage.store import LineageStore, open_store  # noqa: E402
from lineage_guard.lineage.stores.sqlite import SqliteStore  # noqa: E402
from tests.lineage_contract import *  # noqa: E402, F403 (the contract suite runs here)
from tests.lineage_contract import CHAIN, RunSql, batch, hop  # noqa: E402


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
        ("lineage_hops",),
    ]
    indexes = run_sql(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name"
    )
    assert indexes == [
        ("lineage_entries_at",),
        ("lineage_entries_chain_seq",),
        ("lineage_entries_confirms",),
        ("lineage_entries_position",),
        ("lineage_hops_record_id",),
    ]


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


def test_trace_uses_the_record_id_index(store: LineageStore, run_sql: RunSql) -> None:
    store.append(batch([hop("a", 0)]))
    plan = run_sql("EXPLAIN QUERY PLAN SELECT * FROM lineage_hops WHERE record_id IN ('a', 'b')")
    assert any("USING INDEX lineage_hops_record_id" in str(row[-1]) for row in plan), plan


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
