"""Every OpenLineage event the guard emits in file mode is valid against the spec's JSON schemas
(`tests/ol_spec.py`), carries the standard facets, and names the run as the CLI and the lineage
store do. Kafka mode: `tests/integration/test_openlineage_kafka.py`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lineage_guard.contract.validate import suite_rules
from lineage_guard.generate import Faults, generate
from lineage_guard.io.files import write_json_lines
from lineage_guard.lineage.openlineage import CHECKPOINT_SCHEMA_ID, FACET_SCHEMA_ID, facet_schemas
from tests.cli import run_cli
from tests.ol_spec import validate_event

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def events_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.open()]


def test_file_mode_events_are_valid_and_complete(tmp_path: Path) -> None:
    generated = list(generate(600, seed=71, faults=Faults(stripped=0.05, test_origin=0.05)))
    source = tmp_path / "sync.jsonl"
    write_json_lines(source, (g.record for g in generated))
    log = tmp_path / "ol.jsonl"
    key = tmp_path / "guard.pem"
    key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)  # a private key others may read is refused
    result = run_cli(
        "run",
        "--input",
        source,
        "--output-dir",
        tmp_path / "out",
        "--lineage-store",
        f"sqlite:///{tmp_path}/lineage.db",
        "--openlineage",
        f"file:{log}",
        "--openlineage-interval",
        "1",
        "--signing-key",
        key,
        "--checkpoint-out",
        tmp_path / "held.dsse.json",
    )
    assert result.returncode == 0, result.stderr
    events = events_of(log)
    types = [e["eventType"] for e in events]
    assert types[0] == "START" and types[-1] == "COMPLETE"
    assert set(types[1:-1]) <= {"RUNNING"}  # heartbeats (Kafka mode's test asserts them)
    for event in events:
        validate_event(event)

    # One run id, spelt as a UUID with dashes: CLI summary, OpenLineage, lineage store.
    summary_id = re.search(rf"lineage-guard run `({UUID})`", result.stderr)
    assert summary_id is not None, result.stderr
    assert {e["run"]["runId"] for e in events} == {summary_id.group(1)}
    record_id = generated[0].record["record_id"]
    trace = run_cli(
        "lineage", "trace", record_id, "--format", "json", "--lineage-store",
        f"sqlite:///{tmp_path}/lineage.db",
    )  # fmt: skip
    assert trace.returncode == 0, trace.stderr
    assert {e["run_id"] for e in json.loads(trace.stdout)["events"]} == {summary_id.group(1)}

    for event in events:
        job_type = event["job"]["facets"]["jobType"]
        assert (job_type["processingType"], job_type["integration"], job_type["jobType"]) == (
            "BATCH",
            "LINEAGE_GUARD",
            "JOB",
        )
        counts = event["run"]["facets"]["lineageGuard_counts"]
        assert counts["_schemaURL"] == FACET_SCHEMA_ID + "#/$defs/LineageGuardCountsRunFacet"
        assert "None" not in counts["byContentClass"] and "None" not in counts["byOriginEnv"]
    final = events[-1]["run"]["facets"]["lineageGuard_counts"]
    stripped_whole = sum(g.fault == "stripped" and not g.record["provenance"] for g in generated)
    assert stripped_whole > 0
    assert final["byContentClass"]["UNKNOWN"] == stripped_whole
    assert final["byOriginEnv"]["UNKNOWN"] == stripped_whole
    assert sum(final["byContentClass"].values()) == 600

    (dataset,) = events[-1]["inputs"]
    assertions = {
        a["assertion"]: a for a in dataset["inputFacets"]["dataQualityAssertions"]["assertions"]
    }
    failing = {name for name, a in assertions.items() if not a["success"]}
    assert failing == {
        "provenance_missing",
        "generator_required",
        "generated_at_required",
        "disclosure_required",
        "leak_test_origin",
        "leak_staging_origin",
    }
    for rule, column in suite_rules():
        assert assertions[rule].get("column") == column
    assert assertions["generated_at_in_future"]["success"] is True
    assert "dataQualityAssertions" not in json.dumps(events[0])
    checkpoint = events[-1]["run"]["facets"]["lineageGuard_checkpoint"]
    assert checkpoint["_schemaURL"].startswith(CHECKPOINT_SCHEMA_ID + "#")
    assert checkpoint["runId"] == summary_id.group(1) and checkpoint["heads"]
    assert checkpoint["seq"] == 1 and "previous" not in checkpoint  # null: left out
    assert checkpoint["envelope"] == json.loads((tmp_path / "held.dsse.json").read_text())
    # the auditor's copies (the COMPLETE event, the --checkpoint-out file) prove the store
    complete = tmp_path / "complete.json"
    complete.write_text(json.dumps(events[-1]))
    for held in (complete, tmp_path / "held.dsse.json"):
        verified = run_cli(
            "lineage", "verify", "--lineage-store", f"sqlite:///{tmp_path}/lineage.db",
            "--public-key", key, "--checkpoint", held,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stderr
        assert ", 1 signed checkpoints verified" in verified.stdout


def test_a_failed_run_emits_fail_with_its_error_message(tmp_path: Path) -> None:
    broken = tmp_path / "broken.avro"
    broken.write_bytes(b"Obj\x01" + bytes(range(200)))
    log = tmp_path / "ol.jsonl"
    result = run_cli(
        "run", "--input", broken, "--output-dir", tmp_path / "out", "--no-lineage",
        "--openlineage", f"file:{log}",
    )  # fmt: skip
    assert result.returncode == 2
    events = events_of(log)
    assert [e["eventType"] for e in events[:1] + events[-1:]] == ["START", "FAIL"]
    for event in events:
        validate_event(event)
    error = events[-1]["run"]["facets"]["errorMessage"]
    assert error["programmingLanguage"] == "PYTHON"
    assert error["message"].startswith(f"Cannot decode Avro file `{broken}`")
    assert error["message"] in result.stderr


def test_the_spec_check_catches_a_bad_facet() -> None:
    # The checker itself can fail: a custom facet that breaks its shipped schema is caught.
    event = {
        "eventType": "COMPLETE",
        "eventTime": "2026-11-28T10:00:00+00:00",
        "producer": "urn:lineage-guard:0.1",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {
            "runId": "0196c1c6-7f0a-7cc4-a1b4-1d2ef0d7c0a1",
            "facets": {
                "lineageGuard_counts": {
                    "_producer": "urn:lineage-guard:0.1",
                    "_schemaURL": FACET_SCHEMA_ID + "#/$defs/LineageGuardCountsRunFacet",
                    "byContentClass": {"HUMAN": -1},
                    "byOriginEnv": {},
                    "byDecision": {"allowed": 0, "quarantined": 0, "blocked": 0},
                }
            },
        },
        "job": {"namespace": "ns", "name": "job"},
        "inputs": [],
        "outputs": [],
    }
    with pytest.raises(jsonschema.ValidationError, match="-1"):
        validate_event(event)
    assert {d["$id"] for d in facet_schemas()} == {FACET_SCHEMA_ID, CHECKPOINT_SCHEMA_ID}
