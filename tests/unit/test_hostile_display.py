"""Record fields are data wherever they are shown: in the audit commands' tables (never rich
markup, never terminal control sequences) and in the report's charts (never mathtext or TeX)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lineage_guard.lineage.cli import render_table
from lineage_guard.lineage.events import Stage
from lineage_guard.lineage.hops import Outcome, Reason
from lineage_guard.lineage.store import open_store
from tests.cli import run_cli
from tests.lineage_contract import T0, batch, hop

SPOOF = "[bold red]ACME-VERIFIED[/bold red]"


@pytest.fixture
def hostile_store(tmp_path: Path) -> str:
    """One delivered TEST record (a leak) per hostile tenant, generator and record id."""
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    with open_store(url) as store:
        hops = [
            hop("[/]", 0, tenant_id="[/]", origin_env="TEST"),
            hop(f"id-{SPOOF}", 1, tenant_id=SPOOF, origin_env="TEST"),
            hop("ansi", 2, tenant_id="\x1b[2J\x1b[32mclean\x1b[0m", origin_env="TEST"),
            hop("math", 3, generator="$\\undefinedmacro{$"),
            hop("frac", 4, generator="$\\frac{a}{b}$ [/]"),
        ]
        entry = store.append(batch(hops))
        store.confirm([(entry, len(hops), [])], at=T0)
    return url


def test_leaks_shows_markup_and_control_characters_as_written(hostile_store: str) -> None:
    result = run_cli("lineage", "leaks", "--lineage-store", hostile_store)
    assert result.returncode == 1, result.stderr  # three real leaks, no crash
    assert "Traceback" not in result.stderr
    assert result.stderr == "lineage-guard: 3 record(s) reached production that must not have.\n"
    rows = {line.split("│")[2].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert rows["[/]"].split("│")[5].strip() == "[/]"
    assert rows[f"id-{SPOOF}"].split("│")[5].strip() == SPOOF
    assert rows["ansi"].split("│")[5].strip() == "\\x1b[2J\\x1b[32mclean\\x1b[0m"
    assert "\x1b" not in result.stdout


def test_trace_of_a_markup_record_id(hostile_store: str) -> None:
    result = run_cli("lineage", "trace", "[/]", "--lineage-store", hostile_store)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[0] == "Lineage of record [/]"
    spoof = run_cli("lineage", "trace", f"id-{SPOOF}", "--lineage-store", hostile_store)
    assert spoof.returncode == 0, spoof.stderr
    assert spoof.stdout.splitlines()[0] == f"Lineage of record id-{SPOOF}"
    assert f"│ {SPOOF} │" in spoof.stdout  # the tenant column, as written


def test_plain_tables_escape_control_characters() -> None:
    text = render_table("T\x1b[8m", ["h"], [["a\u202eb\nc"]], plain=True)
    assert text == "T\\x1b[8m\nh\n" + "-" * 11 + "\na\\u202eb\\nc"


def test_report_charts_show_generator_names_literally(hostile_store: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_cli(
        "lineage", "report", "--lineage-store", hostile_store, "--out", out, "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    generators = json.loads(result.stdout)["tables"]["generator_outcomes"]
    assert {g["generator"] for g in generators} == {
        "email-assistant",
        "$\\undefinedmacro{$",
        "$\\frac{a}{b}$ [/]",
    }
    page = (out / "report.html").read_text()
    # matplotlib names each text it draws as paths in a comment: the name, as written
    assert "<!-- $\\undefinedmacro{$ -->" in page
    assert "<!-- $\\frac{a}{b}$ [/] -->" in page


def test_validate_text_escapes_control_characters(tmp_path: Path) -> None:
    record = json.loads(Path("examples/crm_synced.jsonl").read_text().splitlines()[3])
    record["record_id"] = "\x1b[2K\rall records passed"
    record["provenance"]["source_system"] = " "  # blank: rejected
    path = tmp_path / "hostile.jsonl"
    path.write_text(json.dumps(record) + "\n")
    result = run_cli("validate", path)
    assert result.returncode == 1, result.stderr
    assert "\x1b" not in result.stdout and "\r" not in result.stdout
    assert result.stdout.splitlines()[0] == (
        f"{path}[0] Record `\\x1b[2K\\rall records passed` REJECTED"
    )


def test_no_leak_and_a_blocked_markup_tenant_exits_0(tmp_path: Path) -> None:
    """The issue's case: "No leaks", then a crash on the blocked table, exit 1 (a CI gate
    would read a leak)."""
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    blocked = hop(
        "blocked",
        0,
        outcome=Outcome.BLOCKED,
        stopped_at=Stage.ENFORCE,
        reasons=(Reason(rule="leak_test_origin", message="TEST may not reach production."),),
        origin_env="TEST",
        tenant_id="[/]",
    )
    with open_store(url) as store:
        entry = store.append(batch([blocked]))
        store.confirm([(entry, 1, [])], at=T0)
    result = run_cli("lineage", "leaks", "--lineage-store", url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("No leaks: nothing reached production that must not have")
    (row,) = [line for line in result.stdout.splitlines() if "│ blocked" in line]
    assert row.split("│")[5].strip() == "[/]"
