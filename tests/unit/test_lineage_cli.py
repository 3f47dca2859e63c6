"""`lineage trace | leaks | verify` on a SQLite store, through click's CliRunner.

(The group is attached to `lineage-guard` by `lineage_guard.cli.main`; here it is invoked directly.)
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

# The contract suite is a plain module: have pytest rewrite its asserts for clear failures.
pytest.register_assert_rewrite("tests.lineage_contract")

from lineage_guard.lineage import queries  # noqa: E402
from lineage_guard.lineage.cli import lineage, render_table  # noqa: E402
from lineage_guard.lineage.errors import ConfigError, ExitCode, UnusableInputError  # noqa: E402
from lineage_guard.lineage.events import Stage  # noqa: E402
from lineage_guard.lineage.store import open_store  # noqa: E402
from tests.lineage_contract import ALLOWED, CHAIN, KEY, T0, batch, hop  # noqa: E402

OTHER_CHAIN = CHAIN[:-1] + "1"


def delivered(store: Any, hops: list[Any], **kwargs: Any) -> None:
    entry = store.append(batch(hops, **kwargs))
    store.confirm([(entry, len(hops), [])], at=kwargs.get("at", T0))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A store with a record (partition 0) and its parent (partition 1), both delivered."""
    path = tmp_path / "lineage.db"
    with open_store(f"sqlite:///{path}") as store:
        delivered(store, [hop("parent", 0)], partition=1)
        delivered(
            store,
            [hop("child", 1, parent_record_ids=("parent",))],
            at=T0 + timedelta(seconds=1),
        )
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(lineage, list(args))


def test_verify_clean(db: Path) -> None:
    result = run("verify", "--lineage-store", f"sqlite:///{db}")
    assert result.exit_code == ExitCode.OK
    assert result.stdout == "ok: 2 chains, 4 batches, 2 hops\n"
    assert result.stderr == ""


def test_verify_with_a_public_key(db: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from lineage_guard.lineage.checkpoints import sign

    public = tmp_path / "guard.pub"
    public.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    unsigned = run("verify", "--lineage-store", f"sqlite:///{db}", "--public-key", str(public))
    assert unsigned.exit_code == ExitCode.VIOLATIONS
    assert "no checkpoint signed by this public key" in unsigned.stderr
    with open_store(f"sqlite:///{db}") as store:
        store.add_checkpoint(sign(KEY, at=T0, run_id="r", heads=store.heads()))
    result = run("verify", "--lineage-store", f"sqlite:///{db}", "--public-key", str(public))
    assert result.exit_code == ExitCode.OK, result.output
    assert result.stdout == ("ok: 2 chains, 4 batches, 2 hops, 1 signed checkpoints verified\n")
    not_a_key = run("verify", "--lineage-store", f"sqlite:///{db}", "--public-key", str(db))
    assert isinstance(not_a_key.exception, ConfigError)
    assert "is not a PEM public key" in not_a_key.exception.message


def test_verify_names_the_first_broken_link_in_one_line(db: Path) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM lineage_hops WHERE record_id = 'child'")
    conn.close()

    result = run("verify", "--lineage-store", f"sqlite:///{db}", "--format", "json")

    assert result.exit_code == ExitCode.VIOLATIONS
    assert result.stderr == (
        f"lineage-guard: chain `{CHAIN}` batch 1 holds 0 hop rows, 1 were written:"
        " rows were deleted\n"
    )
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["broken"]["chain_id"] == CHAIN
    assert document["broken"]["seq"] == 1
    assert document["broken"]["kind"] == "deleted"


def test_verify_csv(db: Path) -> None:
    result = run("verify", "--lineage-store", f"sqlite:///{db}", "--format", "csv")
    assert result.exit_code == ExitCode.OK
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows == [
        {
            "ok": "True",
            "chains": "2",
            "batches": "4",
            "hops": "2",
            "signed_checkpoints": "",
            "chain_id": "",
            "seq": "",
            "index": "",
            "record_id": "",
            "kind": "",
            "description": "",
        }
    ]


def test_trace_json_has_the_record_and_its_ancestor_in_order(db: Path) -> None:
    result = run("trace", "child", "--lineage-store", f"sqlite:///{db}", "--format", "json")

    assert result.exit_code == ExitCode.OK, result.output
    document = json.loads(result.stdout)
    assert document["found"] is True
    assert document["intact"] is True
    assert [(e["record_id"], e["stage"], e["depth"]) for e in document["events"]] == [
        ("parent", stage, 1) for stage in Stage
    ] + [("child", stage, 0) for stage in Stage]
    assert {e["chain_status"] for e in document["events"]} == {"ok"}
    assert document["events"][-1]["decision"] == "delivered"
    assert document["events"][-1]["destination"] == ALLOWED
    assert [(c["chain_id"], c["seq"]) for c in document["chains"]] == sorted(
        [(CHAIN, 1), (OTHER_CHAIN, 1)]
    )
    assert document["missing_ancestors"] == []


def test_trace_table_and_csv(db: Path) -> None:
    table = run("trace", "child", "--lineage-store", f"sqlite:///{db}")
    assert table.exit_code == ExitCode.OK
    assert "Lineage of record child" in table.stdout
    assert "parent (ancestor 1)" in table.stdout
    assert f"chain `{CHAIN}` batch 1: verified ok (Merkle root and link)" in table.stdout
    assert "\x1b[" not in table.stdout  # no colour codes off a terminal

    result = run("trace", "child", "--lineage-store", f"sqlite:///{db}", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["record_id"], r["stage"], r["depth"]) for r in rows][-2:] == [
        ("child", "enforce", "0"),
        ("child", "write", "0"),
    ]
    assert len(rows) == 10
    assert rows[-1]["parent_record_ids"] == '["parent"]'
    assert rows[-1]["chain_status"] == "ok"


def test_trace_of_an_edited_record_exits_1_and_names_the_link(db: Path) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE lineage_hops SET origin_env = 'TEST' WHERE record_id = 'child'")
    conn.close()
    result = run("trace", "child", "--lineage-store", f"sqlite:///{db}", "--format", "json")
    assert result.exit_code == ExitCode.VIOLATIONS
    assert json.loads(result.stdout)["intact"] is False
    assert result.stderr == (
        f"lineage-guard: chain `{CHAIN}` batch 1 does not match its Merkle root:"
        " a hop row was edited or reordered\n"
    )


def test_trace_of_an_unknown_record_exits_1_with_one_line(db: Path) -> None:
    result = run("trace", "nobody", "--lineage-store", f"sqlite:///{db}")
    assert result.exit_code == ExitCode.VIOLATIONS
    assert result.stdout == ""
    assert result.stderr == (
        f"lineage-guard: no lineage events for record `nobody` in `sqlite:///{db}`.\n"
    )


def test_leaks_clean_then_found(db: Path) -> None:
    clean = run("leaks", "--lineage-store", f"sqlite:///{db}", "--format", "json")
    assert clean.exit_code == ExitCode.OK
    assert json.loads(clean.stdout)["leaks"] == []

    with open_store(f"sqlite:///{db}") as store:
        delivered(store, [hop("test-profile", 9, origin_env="TEST")], at=T0 + timedelta(hours=1))
    found = run("leaks", "--lineage-store", f"sqlite:///{db}", "--format", "json")
    assert found.exit_code == ExitCode.VIOLATIONS
    document = json.loads(found.stdout)
    with open_store(f"sqlite:///{db}") as store:
        assert document == queries.leaks(store).to_dict()  # written piece by piece, same data
    assert [leak["record_id"] for leak in document["leaks"]] == ["test-profile"]
    assert document["leaks"][0]["why"][0]["rule"] == "origin_not_production"
    assert found.stderr == ("lineage-guard: 1 record(s) reached production that must not have.\n")

    before = run(
        "leaks", "--lineage-store", f"sqlite:///{db}", "--until", "2026-11-27T12:30:00+00:00"
    )
    assert before.exit_code == ExitCode.OK
    assert "No leaks" in before.stdout
    elsewhere = run(
        "leaks", "--lineage-store", f"sqlite:///{db}", "--production-destination", "other.topic"
    )
    assert elsewhere.exit_code == ExitCode.OK

    table = run("leaks", "--lineage-store", f"sqlite:///{db}", "--since", "2026-11-27T12:30")
    assert table.exit_code == ExitCode.VIOLATIONS
    assert "LEAKS: delivered to production" in table.stdout
    assert "test-profile" in table.stdout
    assert "origin_not_production" in table.stdout


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_a_bad_time_is_unusable_input(db: Path, option: str) -> None:
    result = run("leaks", "--lineage-store", f"sqlite:///{db}", option, "yesterday")
    assert isinstance(result.exception, UnusableInputError)
    assert result.exception.message == (
        f"Cannot read `{option} yesterday`: not an ISO-8601 time; use e.g."
        " `2026-11-27T12:00:00Z` or `2026-11-27`."
    )
    assert result.exception.exit_code == ExitCode.UNUSABLE_INPUT


def test_since_after_until_is_unusable_input(db: Path) -> None:
    result = run(
        "leaks",
        "--lineage-store",
        f"sqlite:///{db}",
        "--since",
        "2026-12-01",
        "--until",
        "2026-11-01",
    )
    assert isinstance(result.exception, UnusableInputError)
    assert result.exception.message == "`--since 2026-12-01` is after `--until 2026-11-01`."


def test_audits_of_a_missing_store_are_config_errors_and_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    result = run("verify", "--lineage-store", f"sqlite:///{missing}")
    assert isinstance(result.exception, ConfigError)
    assert result.exception.exit_code == ExitCode.CONFIG
    assert not missing.exists()


def test_the_default_store_is_under_the_working_directory(db: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path):
        Path(".lineage-guard").mkdir()
        Path(".lineage-guard/lineage.db").write_bytes(db.read_bytes())
        result = runner.invoke(lineage, ["verify"])
    assert result.exit_code == ExitCode.OK
    assert result.stdout == "ok: 2 chains, 4 batches, 2 hops\n"


def test_plain_tables_align_their_columns() -> None:
    text = render_table("Title", ["a", "long header"], [["xyz", "1"], ["q", "22"]], plain=True)
    assert text == "Title\na    long header\n---  -----------\nxyz  1\nq    22"


def lineage_guard(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed entry point, which turns errors into one line and an exit code."""
    return subprocess.run(
        [sys.executable, "-c", "from lineage_guard.cli.main import main; main()", "lineage", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_through_lineage_guard_a_broken_chain_exits_1_and_a_bad_time_2(db: Path) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            f"UPDATE lineage_entries SET hash = 'x' WHERE chain_id = '{CHAIN}' AND seq = 2"
        )
    conn.close()

    broken = lineage_guard("verify", "--lineage-store", f"sqlite:///{db}")
    assert broken.returncode == 1
    assert broken.stderr == (
        f"lineage-guard: chain `{CHAIN}` batch 2 does not match its hash:"
        " the entry was edited after it was written\n"
    )

    bad_time = lineage_guard("leaks", "--lineage-store", f"sqlite:///{db}", "--since", "soon")
    assert bad_time.returncode == 2
    assert bad_time.stdout == ""
    assert bad_time.stderr == (
        "lineage-guard: error: Cannot read `--since soon`: not an ISO-8601 time; use e.g."
        " `2026-11-27T12:00:00Z` or `2026-11-27`.\n"
    )
