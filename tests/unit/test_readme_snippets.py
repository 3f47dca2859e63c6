"""The README's Python blocks, run as they are written there (`/data` moved to a temporary
folder; `records` given to the `Guard` block): the library API the README shows is the one
the package exports."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

from lineage_guard.generate import EMAIL_ACTIVITY, Faults, generate
from lineage_guard.io.files import write_json_lines
from tests.cli import run_cli

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.S | re.M)


def test_the_readme_python_blocks_run_as_written(tmp_path: Path) -> None:
    pipeline, plain = _python_blocks()  # the README's own pipeline, then `Guard`
    assert "WriteGuarded(sink, lineage=lineage)" in pipeline and "Guard(" in plain
    emails = [
        g.record
        for g in generate(
            200, seed=3, entities=(EMAIL_ACTIVITY,), faults=Faults(stripped=0.1, test_origin=0.1)
        )
    ]
    write_json_lines(tmp_path / "emails.jsonl", emails)

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(pipeline.replace("/data", str(tmp_path)), {})
        exec(plain, {"records": emails})

    out = tmp_path / "out"
    allowed = [json.loads(line) for line in (out / "emails.allowed.jsonl").open()]
    stopped = [json.loads(line) for line in (out / "emails.quarantine.jsonl").open()]
    assert len(allowed) + len(stopped) == 200 and stopped
    assert not (out / ".parts").exists()  # `finalize()` joined the parts
    # `Records()` kept each stopped record's violations (printed by the pipeline's own Map),
    # and `Guard` printed the same ones
    lines = printed.getvalue().splitlines()
    invalid = [q for q in stopped if q["stage"] == "validate"]
    assert invalid and all(q["violations"] for q in invalid)
    expected = {
        f"{q['record']['record_id']} {[v['rule'] for v in q['violations']]}" for q in invalid
    }
    assert set(lines[: len(invalid)]) == expected
    assert lines[len(invalid) :]  # what `Guard` printed: one line per stopped record

    store = f"sqlite:///{tmp_path}/lineage.db"
    record_id = allowed[0]["record_id"]
    traced = run_cli("lineage", "trace", record_id, "--lineage-store", store, "--format", "json")
    assert traced.returncode == 0, traced.stderr
    writes = [
        (e["pipeline"], e["decision"], e["destination"])
        for e in json.loads(traced.stdout)["events"]
        if e["stage"] == "write"
    ]
    assert writes == [
        ("enrich", "handed_on", "pipeline:policies"),
        ("production-sink", "delivered", str(out / "emails.allowed.jsonl")),
    ]
    # `enrich` handed TEST records on (it has no production policy): a handoff is no
    # delivery, so no leak; the sink blocked them
    leaks = run_cli("lineage", "leaks", "--lineage-store", store, "--format", "json")
    assert leaks.returncode == 0, leaks.stdout
    report = json.loads(leaks.stdout)
    assert report["leaks"] == [] and report["unconfirmed"] == [] and report["blocked"]
