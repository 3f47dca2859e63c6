"""OpenLineage events of Kafka-mode runs on the real broker, checked against the spec's JSON
schemas (`tests/ol_spec.py`): a bounded run (BATCH), an endless one stopped by SIGTERM
(STREAMING, with RUNNING heartbeats) and one that fails (FAIL with its error message)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lineage_guard.generate import Faults, generate
from lineage_guard.io.decode import encode_single_object
from tests.integration.kafka_helpers import end_offsets, guard_args, guard_cli, new_topics, produce
from tests.ol_spec import validate_event


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.open()] if path.exists() else []


def _traffic(bootstrap: str, topic: str, count: int, seed: int) -> int:
    """Produces `count` records, some leaking TEST data; returns how many must pass."""
    generated = list(generate(count, seed=seed, faults=Faults(test_origin=0.1)))
    produce(
        bootstrap,
        topic,
        [(None, encode_single_object(g.record, g.schema), []) for g in generated],
    )
    return sum(g.fault is None for g in generated)


def _check(events: list[dict[str, Any]], processing: str, namespace: str) -> None:
    for event in events:
        validate_event(event)
        assert event["job"]["facets"]["jobType"]["processingType"] == processing
        assert [i["namespace"] for i in event["inputs"]] == [namespace]
    assert len({e["run"]["runId"] for e in events}) == 1


def test_bounded_kafka_run_emits_batch_events(kafka_bootstrap: str, tmp_path: Path) -> None:
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    passing = _traffic(kafka_bootstrap, src, 1500, seed=81)
    log = tmp_path / "ol.jsonl"
    result = guard_cli(
        *guard_args(kafka_bootstrap, src, out, quarantine, "ol-batch"),
        "--no-lineage",
        "--openlineage",
        f"file:{log}",
        "--openlineage-interval",
        "1",
    )
    assert result.returncode == 0, result.stderr
    events = _events(log)
    assert [e["eventType"] for e in events][:: len(events) - 1] == ["START", "COMPLETE"]
    _check(events, "BATCH", f"kafka://{kafka_bootstrap.split(',')[0]}")
    counts = events[-1]["run"]["facets"]["lineageGuard_counts"]
    assert counts["byDecision"] == {
        "allowed": passing,
        "quarantined": 0,
        "blocked": 1500 - passing,
    }
    assertions = events[-1]["inputs"][0]["inputFacets"]["dataQualityAssertions"]["assertions"]
    assert {a["assertion"] for a in assertions if not a["success"]} == {
        "leak_test_origin",
        "leak_staging_origin",
    }


def _prism() -> str:
    """The Prism binary the endless mode runs on: `LINEAGE_GUARD_PRISM` (CI builds it once with
    infra/prism/prism.sh), else built here by that script."""
    if path := os.environ.get("LINEAGE_GUARD_PRISM"):
        return path
    script = Path(__file__).resolve().parents[2] / "infra" / "prism" / "prism.sh"
    assert script.is_file(), "set LINEAGE_GUARD_PRISM or add infra/prism/prism.sh"
    built = subprocess.run(["bash", str(script), "build"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return built.stdout.strip().splitlines()[-1]


def test_endless_kafka_run_emits_streaming_events(kafka_bootstrap: str, tmp_path: Path) -> None:
    prism = _prism()
    src, out, quarantine = new_topics(kafka_bootstrap, "src", "out", "q")
    passing = _traffic(kafka_bootstrap, src, 600, seed=82)
    log = tmp_path / "ol.jsonl"
    args = guard_args(kafka_bootstrap, src, out, quarantine, "ol-stream")
    args.remove("--until-caught-up")
    args += ["--no-lineage", "--poll-interval", "0.5", "--openlineage", f"file:{log}"]
    args += ["--openlineage-interval", "1", "--prism-location", prism]
    guard = subprocess.Popen(
        [sys.executable, "-c", "from lineage_guard.cli.main import main; main()", *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        # RUNNING events report the job's counts while it runs (read every 2 s): wait until
        # one counts every delivered record.
        while sum(end_offsets(kafka_bootstrap, out).values()) < passing or passing not in [
            e["run"]["facets"]["lineageGuard_counts"]["byDecision"].get("allowed")
            for e in _events(log)
            if e["eventType"] == "RUNNING"
        ]:
            assert time.monotonic() < deadline, "no delivery, or no RUNNING event counted it"
            assert guard.poll() is None, "the endless run ended by itself"
            time.sleep(0.5)
    finally:
        os.kill(guard.pid, signal.SIGTERM)  # an endless run's normal end
        _, stderr = guard.communicate(timeout=120)
    events = _events(log)
    types = [e["eventType"] for e in events]
    assert types[0] == "START" and types[-1] == "COMPLETE", (types, stderr)
    assert "RUNNING" in types
    _check(events, "STREAMING", f"kafka://{kafka_bootstrap.split(',')[0]}")
    assert events[-1]["run"]["facets"]["lineageGuard_counts"]["byDecision"]["allowed"] == passing


def test_failed_kafka_run_emits_fail(kafka_bootstrap: str, tmp_path: Path) -> None:
    (out,) = new_topics(kafka_bootstrap, "out")
    log = tmp_path / "ol.jsonl"
    missing = f"t-missing-{time.time_ns()}"
    result = guard_cli(
        *guard_args(kafka_bootstrap, missing, out, out + "-q", "ol-fail"),
        "--no-lineage",
        "--openlineage",
        f"file:{log}",
    )
    assert result.returncode == 3, result.stderr
    events = _events(log)
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    _check(events, "BATCH", f"kafka://{kafka_bootstrap.split(',')[0]}")
    message = events[-1]["run"]["facets"]["errorMessage"]["message"]
    assert message == f"Input topic `{missing}` does not exist on `{kafka_bootstrap}`."
