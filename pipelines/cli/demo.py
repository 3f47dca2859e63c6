"""`lineage-guard demo`: realistic CRM traffic through the guard, then the auditor's view.

Generates a faulty CRM sync's output (human, AI-assisted and synthetic records; some stripped of
their provenance, some test profiles, some of another tenant), runs the guard on the embedded
default with lineage and OpenLineage on, writes the evidence report, and prints what to try.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from lineage_guard.cli.run import print_summary
from lineage_guard.generate import Faults, generate
from lineage_guard.guard import (
    DEFAULT_RUNNER,
    FilesIO,
    GuardConfig,
    resolve_path,
    resolve_store_url,
    run_once,
)
from lineage_guard.io.file_io import output_names
from lineage_guard.io.files import write_json_lines
from lineage_guard.lineage.report import build_report, write_report
from lineage_guard.lineage.store import open_store


def run_demo(records: int, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    source = folder / "crm_sync.jsonl"
    generated = list(
        generate(
            records, seed=2026, faults=Faults(stripped=0.05, test_origin=0.03, other_tenant=0.02)
        )
    )
    write_json_lines(source, (g.record for g in generated))
    click.echo(f"1. A faulty CRM sync wrote {records} records to `{source}`.", err=True)

    store_url = f"sqlite:///{folder / 'lineage.db'}"
    out = folder / "out"
    out.mkdir()
    inputs = (resolve_path(str(source)),)
    config = GuardConfig(
        io=FilesIO(inputs=inputs, out_dir=resolve_path(str(out)), names=output_names(inputs)),
        policies=("production", "tenant:acme"),
        lineage_store=resolve_store_url(store_url, DEFAULT_RUNNER),
        pipeline_name="crm-sync-guard",
    )
    summary = run_once(config)
    click.echo("2. The guard ran (policies: production, tenant:acme):", err=True)
    print_summary(summary, config, None)

    with open_store(store_url) as store:
        written = write_report(build_report(store), folder / "report")
    click.echo(f"3. Evidence report: {written['html']} (JSON and CSV beside it).", err=True)

    def first(fault: str | None, derived: bool = False) -> str | None:
        return next(
            (
                g.record["record_id"]
                for g in generated
                if g.fault == fault
                and (not derived or (g.record["provenance"] or {}).get("parent_record_ids"))
            ),
            None,
        )

    examples = [
        ("a record a sync stripped of its provenance", first("stripped")),
        ("a test profile the guard kept out of production", first("test_origin")),
        ("a derived AI reply, traced with its ancestors", first(None, derived=True)),
    ]
    click.echo("4. Ask the auditor's questions:", err=True)
    for what, record_id in examples:
        if record_id:
            click.echo(
                f"   # {what}\n   lineage-guard lineage trace {record_id} "
                f"--lineage-store {store_url}",
                err=True,
            )
    click.echo(
        f"   lineage-guard lineage leaks --lineage-store {store_url}\n"
        f"   lineage-guard lineage verify --lineage-store {store_url}",
        err=True,
    )
