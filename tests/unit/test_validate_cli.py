"""`lineage-guard validate` end to end: files in, exit code and report out (CLI contract)."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from lineage_guard.contract.schemas import load_schema
from lineage_guard.generate import CONTACT, EMAIL_ACTIVITY, Faults, faulty_sync_schema, generate
from lineage_guard.io.files import write_avro, write_json_lines
from tests.cli import run_cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def stripped_contacts(count: int, seed: int) -> tuple[list[dict[str, Any]], set[int]]:
    generated = list(generate(count, seed=seed, entities=(CONTACT,), faults=Faults(stripped=0.1)))
    return [g.record for g in generated], {i for i, g in enumerate(generated) if g.fault}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, set[int]]:
    """The same 400 contacts, ~10% stripped, as Avro and as JSON Lines."""
    folder = tmp_path_factory.mktemp("mixed")
    records, bad = stripped_contacts(400, seed=21)
    avro, jsonl = folder / "contacts.avro", folder / "contacts.jsonl"
    write_avro(avro, faulty_sync_schema(CONTACT), records)
    write_json_lines(jsonl, records)
    return avro, jsonl, bad


def test_mixed_avro_reports_exactly_the_stripped_records(mixed: tuple[Path, Path, set[int]]):
    avro, _, bad = mixed
    result = run_cli("validate", avro, "--format", "json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["total"] == 400
    assert report["passed"] == 400 - len(bad)
    assert {r["index"] for r in report["rejected"]} == bad
    assert len(bad) > 20
    for item in report["rejected"]:
        assert set(item) >= {"record_id", "index", "file", "violations"}
        assert item["file"] == str(avro)
        assert item["violations"], item
        assert {"rule", "message"} <= set(item["violations"][0])
        rules = {v["rule"] for v in item["violations"]}
        assert rules in (
            {"provenance_missing"},
            {"generator_required", "generated_at_required"},
            {"generator_required", "generated_at_required", "disclosure_required"},
        )


def test_json_lines_gives_the_same_verdicts_as_avro(mixed: tuple[Path, Path, set[int]]) -> None:
    avro, jsonl, _ = mixed
    from_avro = json.loads(run_cli("validate", avro, "--format", "json").stdout)
    from_jsonl = json.loads(run_cli("validate", jsonl, "--format", "json").stdout)

    def verdicts(report: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [
            (r["index"], r["record_id"], [v["rule"] for v in r["violations"]])
            for r in report["rejected"]
        ]

    assert verdicts(from_jsonl) == verdicts(from_avro)
    assert from_jsonl["total"] == from_avro["total"] == 400


def test_passing_examples_exit_zero() -> None:
    files = sorted(EXAMPLES.glob("*_ok.avro"))
    assert len(files) == 3
    result = run_cli("validate", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("600 records in 3 files: 600 passed, 0 rejected.")


def test_shipped_stripped_example_is_rejected() -> None:
    result = run_cli("validate", EXAMPLES / "contacts_synced_stripped.avro", "--format", "json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    # make_examples.py wrote it from this generator call: exactly its stripped records fail.
    made = generate(200, seed=4, entities=(CONTACT,), faults=Faults(stripped=0.1))
    stripped = [i for i, g in enumerate(made) if g.fault == "stripped"]
    assert report["total"] == 200
    assert [r["index"] for r in report["rejected"]] == stripped
    assert report["passed"] == 200 - len(stripped)


def test_several_files_index_each_from_zero(tmp_path: Path) -> None:
    records, bad = stripped_contacts(50, seed=3)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.avro"
    write_json_lines(first, records)
    write_avro(second, faulty_sync_schema(CONTACT), records)
    report = json.loads(run_cli("validate", first, second, "--format", "json").stdout)
    assert report["total"] == 100
    assert sorted((r["file"], r["index"]) for r in report["rejected"]) == sorted(
        [(str(first), i) for i in bad] + [(str(second), i) for i in bad]
    )


def test_empty_files_pass_with_zero_records(tmp_path: Path) -> None:
    empty_avro, empty_jsonl = tmp_path / "empty.avro", tmp_path / "empty.jsonl"
    write_avro(empty_avro, load_schema(CONTACT), [])
    empty_jsonl.write_text("")
    result = run_cli("validate", empty_avro, empty_jsonl, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "total": 0,
        "passed": 0,
        "basis": "metadata",
        "rejected": [],
    }


@pytest.mark.parametrize("damage", ["truncated", "garbage_block", "random_bytes", "not_json"])
def test_corrupt_files_exit_2_with_one_line(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "broken.avro"
    good = tmp_path / "good.avro"
    write_avro(
        good, load_schema(CONTACT), (g.record for g in generate(300, seed=2, entities=(CONTACT,)))
    )
    data = good.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage_block":
        path.write_bytes(data[:-200] + b"\xff" * 200)
    elif damage == "random_bytes":
        path.write_bytes(bytes(range(256)) * 10)
    else:
        path = tmp_path / "broken.jsonl"
        path.write_text("this is not json\n{}\n")
    result = run_cli("validate", path, "--format", "json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(path) in result.stderr


@pytest.mark.parametrize(
    "args", [["--bogus"], [], ["--format", "xml", "x.avro"], ["does-not-exist.avro"], ["."]]
)
def test_unusable_calls_exit_2_with_one_line(args: list[str]) -> None:
    result = run_cli("validate", *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("lineage-guard: error: ")


def test_bad_json_line_inside_a_file_is_a_rejected_record(tmp_path: Path) -> None:
    records = [g.record for g in generate(3, seed=5, entities=(EMAIL_ACTIVITY,))]
    path = tmp_path / "sync.jsonl"
    write_json_lines(path, records)
    with path.open("a") as handle:
        handle.write('{"record_id": "trunc\n[1, 2]\n')
    report = json.loads(run_cli("validate", path, "--format", "json").stdout)
    assert report["total"] == 5
    assert [(r["index"], [v["rule"] for v in r["violations"]]) for r in report["rejected"]] == [
        (3, ["malformed_record"]),
        (4, ["malformed_record"]),
    ]
    # every verdict says what it rests on: the records' metadata (Code of Practice, Commitment 2)
    assert report["basis"] == "metadata"
    assert [r["basis"] for r in report["rejected"]] == ["metadata", "metadata"]


def test_junit_has_a_failing_case_per_rejected_record(mixed: tuple[Path, Path, set[int]]):
    avro, _, bad = mixed
    ok = EXAMPLES / "contacts_ok.avro"
    result = run_cli("validate", avro, ok, "--format", "junit")
    assert result.returncode == 1
    root = ET.fromstring(result.stdout)
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {str(avro), str(ok)}
    failing = suites[str(avro)].findall("testcase")
    assert len(failing) == len(bad)
    assert all(case.find("failure") is not None for case in failing)
    [passing] = suites[str(ok)].findall("testcase")
    assert passing.find("failure") is None
    assert root.get("tests") == str(len(bad) + 1) and root.get("failures") == str(len(bad))
    for suite in suites.values():
        assert [(p.get("name"), p.get("value")) for p in suite.iter("property")] == [
            ("basis", "metadata")
        ]


def test_text_report_names_file_index_record_and_rule(tmp_path: Path) -> None:
    [record] = [g.record for g in generate(1, seed=9, entities=(EMAIL_ACTIVITY,))]
    record = copy.deepcopy(record)
    record["tenant_id"] = " "
    path = tmp_path / "one.jsonl"
    write_json_lines(path, [record])
    result = run_cli("validate", path)
    assert result.returncode == 1
    assert f"{path}[0] Record `{record['record_id']}` REJECTED" in result.stdout
    assert "tenant_id_blank" in result.stdout
    assert result.stdout.strip().endswith("1 records in 1 file: 0 passed, 1 rejected.")
