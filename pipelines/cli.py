"""The `lineage-guard` command line: one console script, with subcommands.

Data goes to stdout, diagnostics to stderr. Every expected failure ends with a one-line
message and an `ExitCode`; a traceback means a bug in lineage-guard.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from lineage.errors import ExitCode, LineageGuardError, UnusableInputError

log = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More diagnostics on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Guards CRM record streams: provenance checks, sink policies, per-record lineage."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    # GX logs its own chatter at INFO/WARNING; keep it out of the user's stderr by default.
    logging.getLogger("great_expectations").setLevel(max(level, logging.ERROR))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json", "junit"]),
    default="text",
    show_default=True,
    help="Report format on stdout.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="Records per validation micro-batch.",
)
def validate(paths: tuple[Path, ...], output_format: str, batch_size: int) -> None:
    """Check Avro container or JSON Lines files against the provenance contract.

    Exit 0 when every record passed, 1 when at least one was rejected, 2 when a file or the
    call is unusable.
    """
    from pipelines.file_check import RENDERERS, check_files
    from pipelines.validate import SuiteValidator

    for path in paths:
        if not path.is_file():
            reason = "is a directory" if path.is_dir() else "does not exist"
            raise UnusableInputError(f"Cannot read `{path}`: it {reason}.")
    validator = SuiteValidator()
    if sys.stderr.isatty():
        total_bytes = sum(path.stat().st_size for path in paths)
        with click.progressbar(length=total_bytes, label="validating", file=sys.stderr) as bar:
            result = check_files(paths, validator, batch_size=batch_size, on_progress=bar.update)
    else:
        result = check_files(paths, validator, batch_size=batch_size)
    click.echo(RENDERERS[output_format](result), nl=False)
    sys.exit(ExitCode.VIOLATIONS if result.rejected else ExitCode.OK)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the CLI and turns expected failures into one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="lineage-guard", standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help and friends
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: unknown option, missing argument
        click.echo(f"lineage-guard: error: {exc.format_message()} (see --help)", err=True)
        sys.exit(ExitCode.UNUSABLE_INPUT)
    except click.exceptions.Abort:
        click.echo("lineage-guard: aborted", err=True)
        sys.exit(130)
    except LineageGuardError as exc:
        click.echo(f"lineage-guard: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(ExitCode.OK)
