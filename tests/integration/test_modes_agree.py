"""Every mode decides as the per-record reference does, record by record.

The same generated records (stripped provenance, test origins, another tenant's records,
children of synthetic parents) go through:

- the per-record reference chain (`tests/reference_chain.py`, fastavro, one record at a time);
- `Guard.check` (the library, no Beam);
- `lineage-guard validate` on a JSON Lines file (validation rules only: no sink policies);
- `lineage-guard run --input FILE` (the bounded Beam graph, file mode);
- `lineage-guard run` from a Kafka topic of single-object messages (the bounded graph, the
  Rust reader);
- the endless guard on Prism (the streaming job) from the same topic.

Each mode's verdict per record id (allowed, or the rules and messages that stopped it) must be
the reference's.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from lineage_guard import Guard
from lineage_guard.contract.policies import parse_policy
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.generate import Faults, generate
from lineage_guard.io.decode import Decoder, encode_single_object
from lineage_guard.io.files import write_json_lines
from lineage_guard.items import Batch, Item, Source
from tests import reference_chain
from tests.cli import run_cli
from tests.integration.kafka_helpers import (
    drain,
    end_offsets,
    guard_args,
    guard_cli,
    new_topics,
    produce,
)
from tests.integration.test_streaming_guard import _guard, prism  # noqa: F401 (a fixture)

BASE = 1200
CHILDREN = 40  # HUMAN records derived from SYNTHETIC ones: `class_below_parent`
RECORDS = BASE + CHILDREN
POLICIES = ("production", "tenant:acme")
Verdict = tuple[str, tuple[tuple[str, str], ...]]  # decision, ((rule, message), …)


def _records() -> list[tuple[str, dict[str, Any]]]:
    """The generated records, then children that claim HUMAN below SYNTHETIC parents (last,
    so that a streaming run can be given them after their parents were recorded)."""
    faults = Faults(stripped=0.06, test_origin=0.04, other_tenant=0.03)
    out = []
    for g in generate(BASE, seed=17, faults=faults):
        record = g.record
        if record["provenance"] is None:  # the contract schema cannot carry a null
            record["provenance"] = {
                "content_class": "SYNTHETIC", "origin_env": "PRODUCTION",
                "source_system": "crm-sync", "generator": None, "generated_at": None,
                "disclosure": None, "parent_record_ids": [],
            }  # fmt: skip
        out.append((g.schema, record))
    synthetic = [r["record_id"] for _, r in out if r["provenance"]["content_class"] == "SYNTHETIC"]
    humans = [(s, r) for s, r in out if r["provenance"]["content_class"] == "HUMAN"]
    for n in range(CHILDREN):
        schema, human = humans[n]
        child = copy.deepcopy(human)
        child["record_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"child-{n}"))
        child["provenance"]["parent_record_ids"] = [synthetic[n]]
        out.append((schema, child))
    return out


def _reference(messages: list[bytes]) -> dict[str, Verdict]:
    items = tuple(
        Item(source=Source(topic="t", partition=0, offset=n, key=None, value=value))
        for n, value in enumerate(messages)
    )
    batch = reference_chain.decode(Batch(topic="t", partition=0, items=items), Decoder())
    batch = reference_chain.validate(batch, SuiteValidator())
    batch = reference_chain.enforce(batch, [parse_policy(p) for p in POLICIES])
    return {
        item.record["record_id"]: (
            "allowed" if item.allowed else "blocked" if item.blocked else "quarantined",
            tuple((v.rule, v.message) for v in item.violations),
        )
        for item in batch.items
    }


@pytest.fixture(scope="module")
def corpus(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    records = _records()
    messages = [encode_single_object(r, schema) for schema, r in records]
    folder = tmp_path_factory.mktemp("modes")
    path = folder / "records.jsonl"
    write_json_lines(path, [r for _, r in records])
    (src,) = new_topics(kafka_bootstrap, "modes-src", partitions=2)
    keyed = [(r["record_id"].encode(), m, []) for (_, r), m in zip(records, messages, strict=True)]
    produce(kafka_bootstrap, src, keyed, partitions=2)
    expected = _reference(messages)
    decisions = [d for d, _ in expected.values()]
    # every kind of verdict is there to be agreed on
    assert decisions.count("quarantined") >= 50 and decisions.count("blocked") >= 30
    assert decisions.count("allowed") >= 1000
    rules = [r for _, v in expected.values() for r, _m in v]
    assert rules.count("class_below_parent") >= CHILDREN // 2
    return {
        "records": records, "messages": messages, "path": path, "src": src, "expected": expected,
    }  # fmt: skip


def _from_topics(bootstrap: str, out: str, q: str, n: int) -> dict[str, Verdict]:
    got: dict[str, Verdict] = {}
    for m in drain(bootstrap, out):
        got[(m.key or b"").decode()] = ("allowed", ())
    for m in drain(bootstrap, q):
        reasons = json.loads(m.header("lineage-guard.reasons") or b"[]")
        stage = (m.header("lineage-guard.stage") or b"").decode()
        decision = "blocked" if stage == "enforce" else "quarantined"
        got[(m.key or b"").decode()] = (
            decision,
            tuple((r["rule"], r["message"]) for r in reasons),
        )
    assert len(got) == n
    return got


def _agree(got: Mapping[str, Verdict], expected: Mapping[str, Verdict], mode: str) -> None:
    differ = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    assert not differ, f"{mode}: {len(differ)} records differ, e.g. {next(iter(differ.items()))}"
    print(f"{mode}: {len(expected)} records agree with the reference")


def test_guard_check_agrees(corpus: dict[str, Any]) -> None:
    guard = Guard(policies=list(POLICIES))
    records = [r for _, r in corpus["records"]]
    got = {
        c.record_id: (c.decision, tuple((v.rule, v.message) for v in c.violations))
        for c in guard.check(records)
    }
    _agree(got, corpus["expected"], "Guard.check")


def test_validate_agrees_on_the_validation_rules(corpus: dict[str, Any]) -> None:
    result = run_cli("validate", str(corpus["path"]), "--format", "json")
    assert result.returncode == 1, result.stderr
    rejected = {
        r["record_id"]: tuple((v["rule"], v["message"]) for v in r["violations"])
        for r in json.loads(result.stdout)["rejected"]
    }
    expected = {k: v for k, (d, v) in corpus["expected"].items() if d == "quarantined"}
    assert rejected == expected
    print(f"validate: {len(rejected)} rejected records agree with the reference")


def test_file_mode_agrees(corpus: dict[str, Any], tmp_path: Path) -> None:
    result = run_cli(
        "run", "--input", str(corpus["path"]), "--output-dir", str(tmp_path / "out"),
        *(a for p in POLICIES for a in ("--sink-policy", p)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got: dict[str, Verdict] = {}
    for line in (tmp_path / "out" / "records.allowed.jsonl").read_text().splitlines():
        got[json.loads(line)["record_id"]] = ("allowed", ())
    for line in (tmp_path / "out" / "records.quarantine.jsonl").read_text().splitlines():
        entry = json.loads(line)
        decision = "blocked" if entry["stage"] == "enforce" else "quarantined"
        got[entry["record"]["record_id"]] = (
            decision,
            tuple((v["rule"], v["message"]) for v in entry["violations"]),
        )
    _agree(got, corpus["expected"], "run --input")


def test_bounded_kafka_agrees(kafka_bootstrap: str, corpus: dict[str, Any], tmp_path: Path) -> None:
    out, q = new_topics(kafka_bootstrap, "modes-out", "modes-q")
    result = guard_cli(
        *guard_args(kafka_bootstrap, corpus["src"], out, q, f"modes-{tmp_path.name}"),
        "--lineage-store", f"sqlite:///{tmp_path}/lineage.db", "--batch-size", "300",
        *(a for p in POLICIES for a in ("--sink-policy", p)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _agree(_from_topics(kafka_bootstrap, out, q, RECORDS), corpus["expected"], "run (Kafka)")


def test_streaming_job_agrees(
    kafka_bootstrap: str,
    corpus: dict[str, Any],
    prism: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Parents first; their children once the parents are recorded (a streaming job finds a
    parent in the lineage store, which holds what was recorded before)."""
    src, out, q = new_topics(kafka_bootstrap, "modes-ssrc", "modes-sout", "modes-sq")
    keyed = [
        (r["record_id"].encode(), m, [])
        for (_, r), m in zip(corpus["records"], corpus["messages"], strict=True)
    ]
    produce(kafka_bootstrap, src, keyed[:BASE])
    policies = [a for p in POLICIES for a in ("--sink-policy", p)]
    guard = _guard(kafka_bootstrap, src, out, q, prism, tmp_path, tmp_path / "guard.log", *policies)
    try:
        _wait_for_outputs(kafka_bootstrap, guard, out, q, BASE, tmp_path / "guard.log")
        produce(kafka_bootstrap, src, keyed[BASE:])
        _wait_for_outputs(kafka_bootstrap, guard, out, q, RECORDS, tmp_path / "guard.log")
    finally:
        os.killpg(guard.pid, signal.SIGTERM)
        try:
            guard.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(guard.pid, signal.SIGKILL)
            guard.wait()
    _agree(_from_topics(kafka_bootstrap, out, q, RECORDS), corpus["expected"], "endless (Prism)")
    # SIGTERM to the process group stops Prism too: Beam's worker threads here lose their
    # streams, and once printed a traceback each (5) after the stop message.
    log = (tmp_path / "guard.log").read_text()
    assert "stopped by SIGTERM" in log and "Traceback" not in log, log[-3000:]


def _wait_for_outputs(
    bootstrap: str, guard: Any, out: str, q: str, n: int, log: Path, timeout_s: float = 240
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert guard.poll() is None, log.read_text()[-2000:]
        if sum(sum(end_offsets(bootstrap, t).values()) for t in (out, q)) >= n:
            return
        time.sleep(1)
    raise AssertionError(f"the endless guard delivered fewer than {n} records in {timeout_s} s")
