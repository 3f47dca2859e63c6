"""Hostile files on the embedded default and in `validate`: lone surrogates, FIFOs and stdin,
endless lines, the demo's folder, key and output file modes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

from lineage_guard.io.files import MAX_LINE_BYTES
from lineage_guard.lineage.store import open_store
from lineage_guard.stages import clean
from tests.cli import run_cli

CLI = [sys.executable, "-c", "from lineage_guard.cli.main import main; main()"]
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


def test_validate_reads_a_fifo_and_stdin(tmp_path: Path) -> None:
    fifo = tmp_path / "sync.fifo"
    os.mkfifo(fifo)
    data = Path("examples/crm_synced.jsonl").read_bytes()
    writer = threading.Thread(target=fifo.write_bytes, args=(data,), daemon=True)
    writer.start()
    try:
        from_fifo = run_cli("validate", fifo, "--format", "json")
    finally:  # a writer nobody read from stays blocked in open(): let it through
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(timeout=60)
    expected = run_cli("validate", "examples/crm_synced.jsonl", "--format", "json")
    assert expected.returncode == 1  # the example holds faulty records
    assert from_fifo.returncode == 1, from_fifo.stderr
    document = json.loads(from_fifo.stdout)
    assert (document["total"], document["passed"]) == (300, 282)
    assert [r["index"] for r in document["rejected"]] == [
        r["index"] for r in json.loads(expected.stdout)["rejected"]
    ]

    avro = Path("examples/contacts_ok.avro").read_bytes()
    from_stdin = subprocess.run(
        [*CLI, "validate", "/dev/stdin", "--format", "json"],
        input=avro,
        capture_output=True,
        timeout=600,
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert json.loads(from_stdin.stdout) == {
        "total": 200,
        "passed": 200,
        "basis": "metadata",
        "rejected": [],
    }


def test_a_line_past_the_cap_is_a_bad_record_and_reading_goes_on(tmp_path: Path) -> None:
    huge = contact("00000000-0000-4000-8000-000000000002", last_name="x" * MAX_LINE_BYTES)
    lines = [
        contact("00000000-0000-4000-8000-000000000001"),
        huge,
        contact("00000000-0000-4000-8000-000000000003"),
    ]
    path = tmp_path / "sync.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = run_cli("validate", path, "--format", "json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert (document["total"], document["passed"]) == (3, 2)
    (rejected,) = document["rejected"]
    assert (rejected["index"], rejected["record_id"]) == (1, None)
    assert rejected["violations"] == [
        {
            "rule": "malformed_record",
            "column": None,
            "message": f"Record at index 1 of `{path}`: line 2 is longer than "
            f"{MAX_LINE_BYTES} bytes: not read.",
        }
    ]


def test_a_demo_rerun_deletes_only_the_files_the_demo_wrote(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    first = run_cli("demo", "--records", "40", "--dir", folder)
    assert first.returncode == 0, first.stderr
    demo_out = sorted(p.name for p in (folder / "out").iterdir())
    assert demo_out == ["crm_sync.allowed.jsonl", "crm_sync.quarantine.jsonl"]
    mine = [folder / "out" / "my-notes.txt", folder / "report" / "reviewed.md"]
    mine += [folder / "out" / "keep" / "deep.txt"]
    (folder / "out" / "keep").mkdir()
    for path in mine:
        path.write_text("mine")
    (folder / "out" / "crm_sync.allowed.jsonl").write_text("stale\n")

    again = run_cli("demo", "--records", "30", "--dir", folder)
    assert again.returncode == 0, again.stderr
    assert all(path.read_text() == "mine" for path in mine)
    allowed = (folder / "out" / "crm_sync.allowed.jsonl").read_text().splitlines()
    stopped = (folder / "out" / "crm_sync.quarantine.jsonl").read_text().splitlines()
    assert len(allowed) + len(stopped) == 30  # this run's outputs, nothing stale
    assert sorted(p.name for p in (folder / "out").iterdir()) == [*demo_out, "keep", "my-notes.txt"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_signing_key_others_can_read_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "guard.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key], check=True)
    key.chmod(0o644)
    source = tmp_path / "sync.jsonl"
    source.write_text(EXAMPLE + "\n")
    args = ["run", "--input", source, "--output-dir", tmp_path / "out"]
    args += ["--lineage-store", f"sqlite:///{tmp_path}/lineage.db", "--signing-key", key]
    refused = run_cli(*args)
    assert refused.returncode == 3
    assert refused.stderr == (
        f"lineage-guard: error: The signing key `{key}` is readable by others (mode 0644): it"
        f" was not used. Make it private with `chmod 600 {key}`.\n"
    )
    assert not (tmp_path / "lineage.db").exists()  # refused before anything ran
    key.chmod(0o600)
    signed = run_cli(*args)
    assert signed.returncode == 0, signed.stderr


def test_outputs_are_private_whatever_the_umask(tmp_path: Path) -> None:
    source = tmp_path / "sync.jsonl"
    source.write_text(Path("examples/crm_synced.jsonl").read_text())
    out, events = tmp_path / "out", tmp_path / "ol.jsonl"
    out.mkdir()
    out.chmod(0o755)  # whatever this process's umask is
    (out / "sync.allowed.jsonl").write_text("from an earlier run\n")
    (out / "sync.allowed.jsonl").chmod(0o644)
    command = [*CLI, "run", "--input", str(source), "--output-dir", str(out)]
    command += ["--lineage-store", f"sqlite:///{tmp_path}/lineage.db", "--openlineage"]
    command += [f"file:{events}"]
    result = subprocess.run(
        ["sh", "-c", 'umask 022 && exec "$@"', "sh", *command],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == ["sync.allowed.jsonl", "sync.quarantine.jsonl"]
    assert {_mode(out / name) for name in written} == {0o600}
    assert _mode(events) == 0o600
    assert _mode(out) == 0o755  # a folder the user made keeps its mode


def test_run_exits_0_with_records_stopped_and_its_help_says_so(tmp_path: Path) -> None:
    help_text = " ".join(run_cli("run", "--help").stdout.split())
    assert (
        "Exit 0 when every record read was handled, however many were quarantined or blocked"
        " (that is the guard's job; the summary counts them); 2 unusable input, 3 configuration"
        " error, 4 Kafka or the lineage store unreachable, 130 stopped by SIGTERM or Ctrl-C."
        " Never 1."
    ) in help_text
    result = run_cli(
        "run", "--input", "examples/crm_synced.jsonl", "--output-dir", tmp_path / "out",
        "--lineage-store", f"sqlite:///{tmp_path}/lineage.db",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "read 300, allowed 282, quarantined 18, blocked 0" in result.stderr


def test_the_demo_gives_the_process_its_umask_back(tmp_path: Path) -> None:
    """`run_demo` writes for its user only (umask 077) and gives a caller that runs it
    in-process its own umask back (it kept 077 for the rest of the test session)."""
    import os

    from lineage_guard.cli.demo import run_demo

    before = os.umask(0o022)
    try:
        run_demo(60, tmp_path / "demo")
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)
    assert _mode(tmp_path / "demo" / "lineage.db") == 0o600
