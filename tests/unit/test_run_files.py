"""`lineage-guard run` on the embedded default: files in, files out, lineage and OpenLineage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lineage_guard.generate import Faults, generate
from lineage_guard.io.files import write_json_lines
from tests.cli import run_cli


def test_run_on_files_splits_records_and_emits_openlineage(tmp_path: Path) -> None:
    generated = list(
        generate(400, seed=41, faults=Faults(stripped=0.05, test_origin=0.05, other_tenant=0.05))
    )
    source = tmp_path / "sync.jsonl"
    write_json_lines(source, (g.record for g in generated))
    out, events = tmp_path / "out", tmp_path / "ol.jsonl"
    result = run_cli(
        "run",
        "--input",
        source,
        "--output-dir",
        out,
        "--sink-policy",
        "production",
        "--sink-policy",
        "tenant:acme",
        "--lineage-store",
        f"sqlite:///{tmp_path}/lineage.db",
        "--openlineage",
        f"file:{events}",
    )
    assert result.returncode == 0, result.stderr

    faults = {g.record["record_id"]: g.fault for g in generated}
    allowed = [json.loads(line) for line in (out / "sync.allowed.jsonl").open()]
    stopped = [json.loads(line) for line in (out / "sync.quarantine.jsonl").open()]
    assert {r["record_id"] for r in allowed} == {i for i, f in faults.items() if f is None}
    assert {e["record"]["record_id"] for e in stopped} == {i for i, f in faults.items() if f}
    for entry in stopped:
        fault = faults[entry["record"]["record_id"]]
        rules = {v["rule"] for v in entry["violations"]}
        provenance = entry["record"]["provenance"]
        if fault == "stripped":
            assert entry["stage"] == "validate"
            expected = (
                {"provenance_missing"}
                if provenance is None
                else {"generator_required", "generated_at_required"}
                | ({"disclosure_required"} if provenance["content_class"] == "SYNTHETIC" else set())
            )
        elif fault == "test_origin":
            assert entry["stage"] == "enforce"
            expected = {f"leak_{provenance['origin_env'].lower()}_origin"}
        else:
            assert entry["stage"] == "enforce"
            expected = {"tenant_mismatch"}
        assert rules == expected
        assert entry["source"]["file"] == str(source)

    lines = [json.loads(line) for line in events.open()]
    assert [e["eventType"] for e in lines] == ["START", "COMPLETE"]
    assert len({e["run"]["runId"] for e in lines}) == 1
    counts = lines[-1]["run"]["facets"]["lineageGuard_counts"]
    assert counts["byDecision"] == {
        "allowed": len(allowed),
        "quarantined": sum(faults[e["record"]["record_id"]] == "stripped" for e in stopped),
        "blocked": sum(faults[e["record"]["record_id"]] != "stripped" for e in stopped),
    }
    assert sum(counts["byContentClass"].values()) == 400
    assert lines[0]["inputs"] == [
        {"namespace": "file", "name": str(source.resolve()), "facets": {}, "inputFacets": {}}
    ]


def test_run_rejects_bad_policy_and_missing_input(tmp_path: Path) -> None:
    bad = run_cli("run", "--input", tmp_path / "nope.jsonl", "--output-dir", tmp_path)
    assert bad.returncode == 2 and "nope.jsonl" in bad.stderr
    policy = run_cli("run", "--input", __file__, "--sink-policy", "prod")
    assert policy.returncode == 3 and "Unknown sink policy `prod`" in policy.stderr
    assert len(policy.stderr.strip().splitlines()) == 1


def test_lineage_report_matches_the_run(tmp_path: Path) -> None:
    generated = list(generate(300, seed=43, faults=Faults(stripped=0.1, test_origin=0.1)))
    source = tmp_path / "sync.jsonl"
    write_json_lines(source, (g.record for g in generated))
    store = f"sqlite:///{tmp_path}/lineage.db"
    ran = run_cli(
        "run",
        "--input",
        source,
        "--output-dir",
        tmp_path / "out",
        "--lineage-store",
        store,
        "--batch-size",
        "64",
    )
    assert ran.returncode == 0, ran.stderr
    result = run_cli(
        "lineage",
        "report",
        "--lineage-store",
        store,
        "--out",
        tmp_path / "report",
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["records"] == 300
    outcomes = {row["outcome"]: row["records"] for row in report["tables"]["outcomes"]}
    faults = [g.fault for g in generated]
    assert outcomes == {
        k: v
        for k, v in {
            "delivered": faults.count(None),
            "quarantined": faults.count("stripped"),
            "blocked": faults.count("test_origin"),
        }.items()
        if v
    }
    reasons = {row["rule"] for row in report["tables"]["top_reasons"]}
    assert "provenance_missing" in reasons and "leak_test_origin" in reasons
    for name in ("report.html", "report.json", "by_content_class.csv", "top_reasons.csv"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("<svg") == 4
    # Self-contained: no script, no stylesheet or image fetched from anywhere.
    assert "<script" not in html and "<link" not in html and "src=" not in html


def test_a_signed_run_verifies_with_its_public_key_and_fails_after_a_recompute(
    tmp_path: Path,
) -> None:
    """`--signing-key` signs the chain heads at the end of the run (store and OpenLineage
    COMPLETE); `verify --public-key` then catches an intruder who recomputed the chain."""
    import sqlite3
    import subprocess

    key, public = tmp_path / "guard.pem", tmp_path / "guard.pub"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key], check=True)
    subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", public], check=True)
    source = tmp_path / "sync.jsonl"
    write_json_lines(source, (g.record for g in generate(120, seed=44)))
    store, events = f"sqlite:///{tmp_path}/lineage.db", tmp_path / "ol.jsonl"
    ran = run_cli(
        "run", "--input", source, "--output-dir", tmp_path / "out", "--lineage-store", store,
        "--batch-size", "50", "--signing-key", key, "--openlineage", f"file:{events}",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    complete = [json.loads(line) for line in events.open()][-1]
    assert complete["eventType"] == "COMPLETE"
    checkpoint = complete["run"]["facets"]["lineageGuard_checkpoint"]
    # three batches of hops, each followed by its delivery entry
    assert [(h["chain_id"].rsplit("/", 1)[-1], h["seq"]) for h in checkpoint["heads"]] == [("0", 6)]
    ok = run_cli("lineage", "verify", "--lineage-store", store, "--public-key", public)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "ok: 1 chains, 6 batches, 120 hops, 1 signed checkpoints verified\n"

    # An intruder edits a hop and recomputes every root and link, head included.
    from tests.lineage_contract import recompute

    def run_sql(statement: str) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(tmp_path / "lineage.db")
        try:
            with conn:
                return conn.execute(statement).fetchall()
        finally:
            conn.close()

    run_sql("UPDATE lineage_hops SET tenant_id = 'intruder' WHERE idx = 3")
    recompute(run_sql, chain=checkpoint["heads"][0]["chain_id"])
    unkeyed = run_cli("lineage", "verify", "--lineage-store", store)
    assert unkeyed.returncode == 0  # the hash chain alone cannot see a recompute
    keyed = run_cli("lineage", "verify", "--lineage-store", store, "--public-key", public)
    assert keyed.returncode == 1
    assert "is not the batch a signed checkpoint covers" in keyed.stderr


def test_a_run_does_not_import_ipython(tmp_path: Path) -> None:
    """Beam asks whether it runs inside IPython by importing it (0.2-0.4 s of CPU at every
    run's start); the command's own process answers no without the import."""
    source = tmp_path / "sync.jsonl"
    write_json_lines(source, (g.record for g in generate(20, seed=5)))
    command = "from lineage_guard.cli.main import main; main()"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", command, "run", "--input", str(source),
         "--output-dir", str(tmp_path / "out"), "--no-lineage"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "apache_beam" in imported  # the pipeline was built and run
    # (a refused import still prints an `IPython` line; a made one prints its submodules)
    assert not [name for name in imported if name.startswith(("IPython.", "jedi"))]
