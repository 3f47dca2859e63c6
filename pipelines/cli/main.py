"""The `lineage-guard` command line: one console script, with subcommands.

Data goes to stdout, diagnostics to stderr. Every expected failure ends with a one-line
message and an `ExitCode`; a traceback means a bug in lineage-guard.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any

import click

from lineage_guard.lineage.errors import ExitCode, LineageGuardError, UnusableInputError
from lineage_guard.lineage.store import STORE_URL_ENV

log = logging.getLogger(__name__)


ENGINE_OPTION = click.option(
    "--engine",
    type=click.Choice(["compiled", "gx"]),
    default="compiled",
    show_default=True,
    help="`gx` runs Great Expectations itself; `compiled` runs the same suites, faster.",
)


class _Commands(click.Group):
    """The command group, with the commands of `_LAZY_COMMANDS` imported when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _LAZY_COMMANDS.get(cmd_name)
        if module is None:
            return super().get_command(ctx, cmd_name)
        command = getattr(importlib.import_module(module), cmd_name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More diagnostics on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Guards CRM record streams: provenance checks, sink policies, per-record lineage."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    # GX logs its own chatter at INFO/WARNING; keep it out of the user's stderr by default.
    logging.getLogger("great_expectations").setLevel(max(level, logging.ERROR))
    logging.getLogger("librdkafka").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    # Beam logs a failing DoFn's traceback before re-raising; the CLI prints our one line.
    logging.getLogger("apache_beam.runners.common").setLevel(level if verbose else logging.CRITICAL)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_beam_gcp_notice)
        if verbose < 2:
            handler.addFilter(_drop_errors_we_report)


def _drop_beam_gcp_notice(record: logging.LogRecord) -> bool:
    """Beam warns at import that Google Cloud clients are missing; we use none of them."""
    return not str(record.msg).startswith("apitools not found")


def _drop_errors_we_report(record: logging.LogRecord) -> bool:
    """Beam logs a step's exception with its traceback before passing it on; when it is one of
    ours, the entry point prints it as one line, so the traceback is noise (`-vv` shows it)."""
    if not record.name.startswith("apache_beam") or not record.exc_info:
        return True
    seen = set()
    current: BaseException | None = record.exc_info[1]
    while current is not None and id(current) not in seen:
        if isinstance(current, LineageGuardError):
            return False
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return True


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
@ENGINE_OPTION
def validate(paths: tuple[Path, ...], output_format: str, batch_size: int, engine: str) -> None:
    """Check Avro container or JSON Lines files against the provenance contract.

    Exit 0 when every record passed, 1 when at least one was rejected, 2 when a file or the
    call is unusable.
    """
    from lineage_guard.cli.check import RENDERERS, check_files
    from lineage_guard.contract.validate import SuiteValidator

    for path in paths:  # a file, or a FIFO, pipe or `/dev/stdin` read as it streams by
        if path.is_dir() or not path.exists():
            reason = "is a directory" if path.is_dir() else "does not exist"
            raise UnusableInputError(f"Cannot read `{path}`: it {reason}.")
    validator = SuiteValidator(engine=engine)
    if sys.stderr.isatty():
        total_bytes = sum(path.stat().st_size for path in paths)
        with click.progressbar(length=total_bytes, label="validating", file=sys.stderr) as bar:
            result = check_files(paths, validator, batch_size=batch_size, on_progress=bar.update)
    else:
        result = check_files(paths, validator, batch_size=batch_size)
    click.echo(RENDERERS[output_format](result), nl=False)
    sys.exit(ExitCode.VIOLATIONS if result.rejected else ExitCode.OK)


@cli.command(context_settings={"ignore_unknown_options": False})
@click.option("--bootstrap-servers", help="Kafka bootstrap servers; without it, runs on files.")
@click.option("--input-topic", "input_topics", multiple=True, help="Topic to guard (repeatable).")
@click.option("--output-topic", help="Where allowed records go, byte-for-byte.")
@click.option("--quarantine-topic", help="Where stopped records go, with reason headers.")
@click.option(
    "--group-id",
    default="lineage-guard",
    show_default=True,
    help="Consumer group whose committed offsets mark what is guarded.",
)
@click.option(
    "--exactly-once",
    is_flag=True,
    help="Kafka transactions: outputs and input offsets commit together (read_committed "
    "readers see each record once). Default: at-least-once. Bounded runs only "
    "(--until-caught-up): not yet in the endless mode, whose streaming job commits offsets "
    "from its own keyed state after each bundle, outside Kafka transactions (one transaction "
    "per bundle is not built); the endless mode refuses it.",
)
@click.option(
    "--kafka-config",
    "kafka_config",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra librdkafka setting for consumer and producer (repeatable). Secrets "
    "(`sasl.password`, `ssl.key.password`) belong in --kafka-config-file.",
)
@click.option(
    "--kafka-config-file",
    envvar="LINEAGE_GUARD_KAFKA_CONFIG_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="librdkafka settings, `key=value` per line (Kafka's client.properties format), "
    "e.g. the SASL/SSL secrets; --kafka-config overrides it. Env: LINEAGE_GUARD_KAFKA_CONFIG_FILE.",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Embedded default: an Avro or JSON Lines file to guard (repeatable).",
)
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    default=Path("out"),
    show_default=True,
    help="Embedded default: where allowed/quarantine files go.",
)
@click.option(
    "--sink-policy",
    "policies",
    multiple=True,
    default=("production",),
    show_default=True,
    help="production | tenant:ID | training[:real|synthetic|mixed] (repeatable).",
)
@click.option("--schema", "raw_schema", help="Schema of raw (unframed) Avro messages.")
@click.option("--schema-registry", help="Confluent Schema Registry URL for framed messages.")
@click.option(
    "--until-caught-up",
    is_flag=True,
    help="Read up to the end offsets present at start, then exit.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.01, max=60),
    default=0.1,
    show_default=True,
    help="Endless mode: seconds a caught-up partition waits before it asks Kafka again (the "
    "delay of the first record after a quiet spell, against polls of an idle topic). "
    "Bounded runs read to their end without waiting.",
)
@click.option(
    "--lineage-store",
    envvar=STORE_URL_ENV,
    default="sqlite:///.lineage-guard/lineage.db",
    show_default=True,
    help=f"sqlite:///PATH or postgresql://… URL. Env: {STORE_URL_ENV} (keep a password out "
    "of the command line: there, or libpq's PGPASSWORD / PGPASSFILE).",
)
@click.option("--no-lineage", is_flag=True, help="Do not record lineage (not for production).")
@click.option(
    "--service-wait",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds an unreachable lineage store or Schema Registry is waited out before exit 4.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Records per micro-batch.",
)
@ENGINE_OPTION
@click.option(
    "--signing-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 private key (PEM): sign the lineage chain heads when the run ends.",
)
@click.option(
    "--checkpoint-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the signed checkpoint (a DSSE envelope) to this file: keep it where the"
    " store's writer cannot rewrite it, for `lineage verify --checkpoint`.",
)
@click.option("--pipeline-name", default="lineage-guard", show_default=True)
@click.option(
    "--openlineage",
    metavar="TARGET",
    envvar="LINEAGE_GUARD_OPENLINEAGE",
    help="Emit OpenLineage run events: console | file:PATH | http(s)://URL | "
    "kafka:TOPIC@BOOTSTRAP. Env: LINEAGE_GUARD_OPENLINEAGE.",
)
@click.option(
    "--openlineage-api-key",
    envvar="OPENLINEAGE_API_KEY",
    metavar="KEY",
    help="API key for an http(s) OpenLineage endpoint (sent as a Bearer token). Give it "
    "from the environment (OPENLINEAGE_API_KEY) or --openlineage-api-key-file.",
)
@click.option(
    "--openlineage-api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File whose first line is the OpenLineage API key.",
)
@click.option(
    "--openlineage-namespace",
    default="lineage-guard",
    show_default=True,
    help="OpenLineage job namespace.",
)
@click.option(
    "--openlineage-interval",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds between RUNNING events.",
)
@click.option(
    "--runner",
    default="FnApiRunner",
    show_default=True,
    help="Beam runner (never the downloading DirectRunner by default).",
)
@click.option(
    "--prism-location",
    envvar="LINEAGE_GUARD_PRISM",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Endless mode: the Prism binary (default: `prism` on PATH); see infra/prism/.",
)
@click.option(
    "--flink-rest",
    envvar="LINEAGE_GUARD_FLINK_REST",
    default=None,
    metavar="HOST:FIRST-LAST",
    help="Endless mode on Flink: the REST ports of the job server's jobs (infra/flink/flink.sh: "
    "127.0.0.1:18100-18119); before it starts its job the guard cancels there the job a killed "
    "guard of its group left.",
)
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
def run(**options: Any) -> None:
    """Run the guard: Kafka topics in, allowed and quarantine topics out, lineage recorded.

    Without --bootstrap-servers it runs on the embedded default: --input files in, JSON Lines
    files out in --output-dir. Arguments after `--` go to Beam's pipeline options.

    Exit 0 when every record read was handled, however many were quarantined or blocked (that
    is the guard's job; the summary counts them); 2 unusable input, 3 configuration error,
    4 Kafka or the lineage store unreachable, 130 stopped by SIGTERM or Ctrl-C. Never 1.
    """
    from lineage_guard.cli.run import run_guard

    run_guard(**options)


@cli.command()
@click.option(
    "--records",
    type=click.IntRange(min=10),
    default=3000,
    show_default=True,
    help="How many CRM records the faulty sync produces.",
)
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path),
    default=Path("lineage-guard-demo"),
    show_default=True,
    help="A new or empty folder, or an earlier demo's (its files are replaced; nothing else is).",
)
def demo(records: int, folder: Path) -> None:
    """Generate CRM traffic, guard it on the embedded default, write the evidence report."""
    from lineage_guard.cli.demo import run_demo

    run_demo(records, folder)


# Commands kept in their own modules and imported only when one of them runs (or `--help`
# lists them): the web side's (FastAPI, argon2) and the evidence pack's (securesystemslib, which
# imports boto3) cost about two seconds of start-up that `run` and `validate` do not need.
_LAZY_COMMANDS = {
    "lineage": "lineage_guard.lineage.cli",
    "evidence": "lineage_guard.cli.evidence",
    "users": "lineage_guard.cli.users",
    "keys": "lineage_guard.cli.users",
    "gateway": "lineage_guard.cli.gateway",
    "serve": "lineage_guard.cli.serve",
    "db": "lineage_guard.cli.db",
}


def _not_in_ipython() -> None:
    """Beam asks, at every transform it applies, whether it runs inside IPython, and asks by
    importing IPython: 0.2-0.4 s of CPU, a fifth of a small run's. The `lineage-guard`
    command's own process never runs inside IPython (a shell or kernel would have imported it
    first), so there the import is made to fail at once (`None` in `sys.modules`); nothing
    the command runs needs IPython."""
    sys.modules.setdefault("IPython", None)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the CLI and turns expected failures into one line and an exit code."""
    for stream in (sys.stdout, sys.stderr):  # data may hold lone surrogates: never crash on them
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if argv is None:  # this process's own command line: no secret stays in its title
        from lineage_guard.cli.secrets import hide_from_process_title

        hide_from_process_title(sys.argv[1:])
        _not_in_ipython()
    try:
        cli.main(args=argv, prog_name="lineage-guard", standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help and friends
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare group: show its help
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        sys.exit(ExitCode.OK)
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
