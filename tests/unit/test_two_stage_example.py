"""The README's library example: a data engineer's own two-stage Beam pipeline
(`examples/two_stage_pipeline.py`), run as a user runs it, then audited with `lineage trace`."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from lineage_guard.generate import EMAIL_ACTIVITY, generate
from lineage_guard.io.files import write_json_lines
from tests.cli import run_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two_stage_pipeline.py"


def test_two_stage_pipeline_records_both_hops_and_judges_replies_by_their_parents(
    tmp_path: Path,
) -> None:
    emails = [g.record for g in generate(300, seed=11, entities=(EMAIL_ACTIVITY,))]
    inbound = [e for e in emails if e["direction"] == "INBOUND"]
    synthetic = {e["record_id"] for e in inbound if e["provenance"]["content_class"] == "SYNTHETIC"}
    assert synthetic and len(synthetic) < len(inbound)  # both kinds of parent are present
    source = tmp_path / "emails.jsonl"
    write_json_lines(source, emails)
    out, store = tmp_path / "out", f"sqlite:///{tmp_path / 'lineage.db'}"

    done = subprocess.run(
        [sys.executable, str(EXAMPLE), str(source), str(out), store],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr

    def reply_of(email_id: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "reply:" + email_id))

    allowed = [json.loads(line) for line in (out / "emails.allowed.jsonl").open()]
    replies = [json.loads(line) for line in (out / "replies.allowed.jsonl").open()]
    stopped = [json.loads(line) for line in (out / "replies.quarantine.jsonl").open()]
    assert [r["record_id"] for r in allowed] == [e["record_id"] for e in emails]
    assert {r["record_id"] for r in replies} == {
        reply_of(e["record_id"]) for e in inbound if e["record_id"] not in synthetic
    }
    # a reply marked AI_ASSISTED to a SYNTHETIC email: found through the lineage store
    assert {q["record"]["record_id"] for q in stopped} == {reply_of(i) for i in synthetic}
    assert {v["rule"] for q in stopped for v in q["violations"]} == {"class_below_parent"}
    assert not (out / "emails.quarantine.jsonl").exists()

    email = next(e["record_id"] for e in inbound if e["record_id"] in synthetic)
    traced = run_cli("lineage", "trace", email, "--lineage-store", store, "--format", "json")
    assert traced.returncode == 0, traced.stderr
    events = json.loads(traced.stdout)["events"]
    hops = [(e["pipeline"], e["stage"], e["decision"]) for e in events if e["depth"] == 0]
    writes = [
        (e["pipeline"], e["decision"], e["destination"])
        for e in events
        if e["depth"] == 0 and e["stage"] == "write"
    ]
    # enrich handed the email on inside the pipeline: no delivery claimed, no file named
    assert writes == [
        ("enrich", "handed_on", "pipeline:draft-replies"),
        ("production-sink", "delivered", str(out / "emails.allowed.jsonl")),
    ]
    assert [h for h in hops if h[1] == "write"] == [
        ("enrich", "write", "handed_on"),
        ("production-sink", "write", "delivered"),
    ]
    # every delivery a hop claims happened: the file it names exists
    for e in json.loads(traced.stdout)["events"]:
        if e["decision"] == "delivered":
            assert Path(e["destination"]).is_file(), e
    reply = run_cli(
        "lineage", "trace", reply_of(email), "--lineage-store", store, "--format", "json"
    )
    assert reply.returncode == 0, reply.stderr
    seen = {(e["depth"], e["pipeline"], e["decision"]) for e in json.loads(reply.stdout)["events"]}
    assert (0, "production-sink", "quarantined") in seen  # the reply, stopped at the sink
    assert {(1, "enrich", "handed_on"), (1, "production-sink", "delivered")} <= seen  # its parent
    text = run_cli("lineage", "trace", email, "--lineage-store", store)
    assert text.returncode == 0, text.stderr
    assert "chain `enrich/" in text.stdout  # each hop's chain is named after its stage
    assert "chain `production-sink/" in text.stdout
