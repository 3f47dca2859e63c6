"""`lineage-guard evidence …`: the auditor's evidence pack (`lineage_guard.evidence.export`).

    evidence export --lineage-store URL --signing-key KEY [--from T1] [--to T2] --out DIR
    evidence verify DIR --public-key KEY

`export` exits 0 when the pack is written and the store's chains verify, 1 when it is written
but a control has a finding (a leak, a broken chain); `verify` exits 0 when every file and
signature of the pack checks out offline, 1 at the first problem (one line on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lineage_guard.lineage.checkpoints import load_private_key, load_public_key
from lineage_guard.lineage.cli import _window, render_table, shown
from lineage_guard.lineage.errors import ExitCode
from lineage_guard.lineage.store import DEFAULT_STORE_URL, STORE_URL_ENV, open_store


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def evidence() -> None:
    """The auditor's evidence pack: controls, observations, OSCAL, signed manifest."""


@evidence.command()
@click.option(
    "--lineage-store",
    "store_url",
    envvar=STORE_URL_ENV,
    default=DEFAULT_STORE_URL,
    show_default=True,
    metavar="URL",
    help=f"`sqlite:///path/to.db` or `postgresql://user@host:port/db`. Env: {STORE_URL_ENV}.",
)
@click.option(
    "--from", "since", metavar="TIME", help="ISO-8601; the period's start (UTC if no offset)."
)
@click.option("--to", "until", metavar="TIME", help="ISO-8601; the period's end, excluded.")
@click.option(
    "--signing-key",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 private key (PEM) that signs the manifest (the guard's checkpoint key).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A new or empty folder for the pack.",
)
def export(
    store_url: str, since: str | None, until: str | None, signing_key: Path, out_dir: Path
) -> None:
    """Write the evidence pack of the lineage store for a period."""
    from lineage_guard.evidence.export import control_table_lines, export_pack

    start, end = _window(since, until)
    key = load_private_key(signing_key)
    with open_store(store_url, create=False) as store:
        pack = export_pack(store, out_dir, key=key, since=start, until=end)
    click.echo(
        render_table(
            f"Controls ({len(pack.rows)}), evidence pack `{out_dir}`",
            ["control", "observed", "finding"],
            list(control_table_lines(pack.rows)),
        )
    )
    click.echo(
        f"lineage-guard: {len(pack.files) + 1} files written to `{out_dir}`, signed in"
        " `manifest.dsse.json`.",
        err=True,
    )
    findings = [row for row in pack.rows if row.finding]
    for row in findings:
        click.echo(
            f"lineage-guard: {row.control.framework} {row.control.reference}:"
            f" {shown(row.finding or '')}",
            err=True,
        )
    sys.exit(ExitCode.VIOLATIONS if findings else ExitCode.OK)


@evidence.command()
@click.argument("pack_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--public-key",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 public key (PEM) the pack and its checkpoints were signed with.",
)
def verify(pack_dir: Path, public_key: Path) -> None:
    """Check an evidence pack offline: the manifest's signature, every file's SHA-256, no file
    added, every checkpoint's signature and chain."""
    from lineage_guard.evidence.export import verify_pack

    problems = verify_pack(pack_dir, load_public_key(public_key))
    if problems:
        click.echo(f"lineage-guard: {shown(problems[0])}", err=True)
        if len(problems) > 1:
            click.echo(f"lineage-guard: and {len(problems) - 1} more problem(s).", err=True)
        sys.exit(ExitCode.VIOLATIONS)
    click.echo(f"ok: evidence pack `{pack_dir}` verifies (manifest, files, checkpoints).")
