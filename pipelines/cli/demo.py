"""`lineage-guard demo`: realistic CRM traffic through the guard, then the auditor's view.

Generates a faulty CRM sync's output (human, AI-assisted and synthetic records; some stripped of
their provenance, some test profiles, some of another tenant), runs the guard on the embedded
default with lineage and OpenLineage on, writes the evidence report, and prints what to try.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from lineage_guard.cli.run import output_dir, print_summary
from lineage_guard.generate import Faults, generate
from lineage_guard.guard import (
    DEFAULT_RUNNER,
    FilesIO,
    GuardConfig,
    resolve_path,
    resolve_store_url,
    run_once,
)
from lineage_guard.io.file_io import KINDS, PARTS, output_names
from lineage_guard.io.files import write_json_lines
from lineage_guard.lineage.errors import UnusableInputError
from lineage_guard.lineage.report import Report, build_report, write_report
from lineage_guard.lineage.store import open_store

MARKER = ".lineage-guard-demo"  # written into every folder the demo creates
SOURCE = "crm_sync.jsonl"
# What a demo run writes into its folder; a rerun removes only these, never anything else
# (a user's own file in `out/` or `report/` stays, and so do those folders).
DEMO_FILES = (SOURCE, "lineage.db", "lineage.db-wal", "lineage.db-shm")


def _demo_files(folder: Path) -> list[Path]:
    """Every file a demo run writes under `folder`, its parts folder aside."""
    (name,) = output_names([SOURCE]).values()
    outputs = [folder / "out" / f"{name}.{kind}.jsonl" for kind in KINDS]
    report = Report(since=None, until=None)
    reports = ["report.json", "report.html", *(f"{table}.csv" for table in report.tables())]
    return [*(folder / f for f in DEMO_FILES), *outputs, *(folder / "report" / r for r in reports)]


def prepare_folder(folder: Path) -> None:
    """Make `folder` the demo's: create it (0700, with a marker), or clear an earlier demo's
    own files from it. Refuses the current folder or one of its parents, a file, and a
    non-empty folder without the marker: the demo never deletes what it did not write."""
    try:
        resolved = folder.resolve()
        cwd = Path.cwd().resolve()
    except OSError as exc:
        raise UnusableInputError(f"Cannot use `--dir {folder}`: {exc.strerror or exc}.") from None
    if resolved == cwd or resolved in cwd.parents:
        raise UnusableInputError(
            f"`--dir {folder}` is the current folder or one of its parents: give the demo a"
            " folder of its own, e.g. `--dir lineage-guard-demo`."
        )
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir() or folder.is_symlink():
            raise UnusableInputError(f"`--dir {folder}` exists and is not a folder.")
        if any(folder.iterdir()) and not (folder / MARKER).is_file():
            raise UnusableInputError(
                f"`--dir {folder}` is not empty and was not made by `lineage-guard demo`:"
                " nothing was changed. Choose a new or empty folder."
            )
        for path in _demo_files(folder):
            if not path.is_symlink() and path.is_file():
                path.unlink()
        (name,) = output_names([SOURCE]).values()
        parts = folder / "out" / PARTS / name  # a killed run's part files, all the demo's
        if parts.is_dir() and not parts.is_symlink():
            shutil.rmtree(parts)
    else:
        output_dir(folder, "--dir")
    (folder / MARKER).write_text("made by `lineage-guard demo`; reruns replace its files\n")
    os.chmod(folder / MARKER, 0o600)


def run_demo(records: int, folder: Path) -> None:
    prepare_folder(folder)
    # Everything the demo writes is for its user only (0600 files, 0700 folders); the
    # process's own umask is given back after, for a caller that runs the demo in-process.
    umask = os.umask(0o077)
    try:
        _demo(records, folder)
    finally:
        os.umask(umask)


def _demo(records: int, folder: Path) -> None:
    source = folder / SOURCE
    generated = list(
        generate(
            records, seed=2026, faults=Faults(stripped=0.05, test_origin=0.03, other_tenant=0.02)
        )
    )
    write_json_lines(source, (g.record for g in generated))
    click.echo(f"1. A faulty CRM sync wrote {records} records to `{source}`.", err=True)

    store_url = f"sqlite:///{folder / 'lineage.db'}"
    out = folder / "out"
    out.mkdir(exist_ok=True)
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
