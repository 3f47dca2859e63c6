"""Hostile files on the embedded default and in `validate`: lone surrogates, FIFOs and stdin,
endless lines, the demo's folder, key and output file modes."""

from __future__ import annotations

import json
from pathlib import Path

from lineage_guard.lineage.store import open_store
from lineage_guard.stages import clean
from tests.cli import run_cli

EXAMPLE = Path("examples/crm_synced.jsonl").read_text().splitlines()[3]  # a valid HUMAN contact


def contact(record_id: str, **fields: str) -> dict[str, object]:
    record: dict[str, object] = {**json.loads(EXAMPLE), "record_id": record_id, **fields}
    return record


def test_a_lone_surrogate_goes_through_run_as_through_validate(tmp_path: Path) -> None:
    passing = contact("00000000-0000-4000-8000-000000000001", first_name="\ud800")
    rejected = contact("00000000-0000-4000-8000-000000000002", tenant_id="acme\udfff")
    source = tmp_path / "sync.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in (passing, rejected)))

    checked = run_cli("validate", source, "--format", "json")
    assert checked.returncode == 1, checked.stderr
    assert [r["index"] for r in json.loads(checked.stdout)["rejected"]] == [1]

    out, db = tmp_path / "out", tmp_path / "lineage.db"
    result = run_cli(
        "run", "--input", source, "--output-dir", out, "--lineage-store", f"sqlite:///{db}"
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    allowed = [json.loads(line) for line in (out / "sync.allowed.jsonl").open(encoding="utf-8")]
    assert allowed == [passing]  # the same value, its surrogate written as `\ud800`
    (entry,) = [json.loads(line) for line in (out / "sync.quarantine.jsonl").open()]
    assert entry["record"] == rejected
    assert [v["rule"] for v in entry["violations"]] == ["wrong_type"]
    assert entry["violations"][0]["column"] == "tenant_id"
    with open_store(f"sqlite:///{db}", create=False) as store:
        tenants = {s.event.tenant_id for s in store.events()}
    assert tenants == {"acme", clean("acme\udfff")}  # the store holds cleaned text
