"""`lineage-guard lineage …`: audit commands over a lineage store.

    lineage trace RECORD_ID      every event of a record and its ancestors, with chain status
    lineage leaks [--since T] [--until T]
                                 test/staging or invalid records that reached production, and
                                 the attempts the guard blocked
    lineage report [--since T] [--until T] [--out DIR]
                                 evidence report: JSON, CSV and an offline HTML page
    lineage verify               walk every hash chain; name the first broken link

Each takes `--lineage-store URL` and `--format table|json|csv`. Data goes to stdout (one JSON
document with `--format json`), diagnostics to stderr. Exit 1 when the answer is bad news (a
record unknown, a real leak, a broken chain); expected failures raise `LineageGuardError`,
which the `lineage-guard` entry point turns into one line and its exit code.
"""

from __future__ import annotations

import io
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from lineage_guard.lineage import csv_cells, queries
from lineage_guard.lineage.checkpoints import load_checkpoint, load_public_key
from lineage_guard.lineage.errors import ExitCode, UnusableInputError
from lineage_guard.lineage.events import StoredEvent, format_time
from lineage_guard.lineage.store import DEFAULT_STORE_URL, STORE_URL_ENV, open_store

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = ("table", "json", "csv")
RICH_MAX_ROWS = 2000
# Characters a terminal acts on instead of showing (C0/C1 controls, ESC starting colour or
# cursor sequences, and the bidirectional overrides that reorder a line): in a table they are
# shown as Python escapes, so no record field can restyle, move or hide what is printed.
_TERMINAL_CONTROLS = {
    code: ascii(chr(code))[1:-1]
    for code in [
        *range(0x20),
        *range(0x7F, 0xA0),
        0x200E,
        0x200F,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    ]
}


def _store_option(command: F) -> F:
    return click.option(
        "--lineage-store",
        "store_url",
        envvar=STORE_URL_ENV,
        default=DEFAULT_STORE_URL,
        show_default=True,
        metavar="URL",
        help=f"`sqlite:///path/to.db` or `postgresql://user@host:port/db`. Env: {STORE_URL_ENV}.",
    )(command)


def _format_option(command: F) -> F:
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format on stdout.",
    )(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def lineage() -> None:
    """Audit per-record lineage: trace a record, find leaks, verify the hash chains."""


@lineage.command()
@click.argument("record_id")
@_store_option
@_format_option
@click.option(
    "--verify-chains/--no-verify-chains",
    default=True,
    show_default=True,
    help="Walk every chain the events are in, to show whether it is intact.",
)
def trace(record_id: str, store_url: str, output_format: str, verify_chains: bool) -> None:
    """Every event of RECORD_ID and of its ancestors, in time order, with chain status.

    Exit 0 when found and every chain involved is intact, 1 when the record is unknown or a
    chain is broken.
    """
    with open_store(store_url, create=False) as store:
        result = queries.trace(store, record_id, verify_chains=verify_chains)
        url = store.url
    if not result.found:
        click.echo(
            f"lineage-guard: no lineage events for record `{record_id}` in `{url}`.", err=True
        )
        sys.exit(ExitCode.VIOLATIONS)
    click.echo(_render_trace(result, output_format), nl=False)
    for chain in result.chains:
        if chain.broken is not None:
            click.echo(f"lineage-guard: {shown(chain.broken.description)}", err=True)
    sys.exit(ExitCode.OK if result.intact else ExitCode.VIOLATIONS)


@lineage.command()
@click.option("--since", metavar="TIME", help="ISO-8601; events at or after it (UTC if no offset).")
@click.option("--until", metavar="TIME", help="ISO-8601; events before it (UTC if no offset).")
@click.option(
    "--production-destination",
    "production_destinations",
    multiple=True,
    metavar="TOPIC",
    help="A production topic or path (repeat). Default: every delivery counts as production.",
)
@_store_option
@_format_option
def leaks(
    since: str | None,
    until: str | None,
    production_destinations: tuple[str, ...],
    store_url: str,
    output_format: str,
) -> None:
    """Records from TEST/STAGING or with failed provenance delivered to production (must be
    none), and the leak attempts the guard blocked.

    Exit 0 when there is no leak, 1 when at least one record reached production (or was sent
    there without an acknowledgement) that must not have.
    """
    start, end = _window(since, until)
    with open_store(store_url, create=False) as store:
        report = queries.leaks(
            store,
            since=start,
            until=end,
            production_destinations=production_destinations or None,
        )
    for chunk in _render_leaks(report, output_format):
        click.echo(chunk, nl=False)
    if report.leaks:
        click.echo(
            f"lineage-guard: {len(report.leaks)} record(s) reached production that must not have.",
            err=True,
        )
    if report.unconfirmed:
        click.echo(
            f"lineage-guard: {len(report.unconfirmed)} record(s) that must not reach production"
            " were sent there without an acknowledgement: they may have arrived.",
            err=True,
        )
    found = report.leaks or report.unconfirmed
    sys.exit(ExitCode.VIOLATIONS if found else ExitCode.OK)


@lineage.command()
@click.option("--since", metavar="TIME", help="ISO-8601; events at or after it (UTC if no offset).")
@click.option("--until", metavar="TIME", help="ISO-8601; events before it (UTC if no offset).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("lineage-report"),
    show_default=True,
    help="Folder for report.json, the CSV tables and report.html.",
)
@_store_option
@_format_option
def report(
    since: str | None, until: str | None, out_dir: Path, store_url: str, output_format: str
) -> None:
    """Evidence report: volumes by content class, generator, source system and tenant,
    decisions over time, top quarantine reasons; as JSON, CSV and an offline HTML page."""
    from lineage_guard.lineage.report import build_report, write_report

    start, end = _window(since, until)
    with open_store(store_url, create=False) as store:
        built = build_report(store, since=start, until=end)
    written = write_report(built, out_dir)
    if output_format == "json":
        click.echo(json.dumps(built.to_dict(), ensure_ascii=False))
    else:
        rows = [
            {"table": name, **dict(zip(header, row, strict=True))}
            for name, (header, table_rows) in built.tables().items()
            if name in ("outcomes", "by_content_class", "top_reasons")
            for row in table_rows
        ]
        if output_format == "csv":
            columns = ["table", "outcome", "content_class", "stage", "rule", "records"]
            click.echo(_csv(columns, rows), nl=False)
        else:
            click.echo(f"{built.records} records read; report written to {written['html']}")
            for row in rows:
                label = " ".join(str(v) for k, v in row.items() if k not in ("table", "records"))
                click.echo(f"  {row['table']:<18} {shown(label):<40} {row['records']:>10}")
    click.echo(f"lineage-guard: report in `{out_dir}` (report.html, report.json, CSV).", err=True)


@lineage.command()
@click.option("--chain", "chain_id", metavar="CHAIN_ID", help="Verify this chain only.")
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 public key (PEM): also check the signed checkpoints of the chain heads.",
)
@click.option(
    "--checkpoint",
    "held_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A checkpoint kept outside the store (the file `run --checkpoint-out` wrote, a run's"
    " OpenLineage COMPLETE event, or one from an evidence pack): prove the store extends it."
    " Needs --public-key.",
)
@_store_option
@_format_option
def verify(
    chain_id: str | None,
    public_key: Path | None,
    held_file: Path | None,
    store_url: str,
    output_format: str,
) -> None:
    """Walk every chain: each batch's rows against its Merkle root, each batch's link to the
    one before, each chain's head; with --public-key, the signed checkpoints and their links
    too; with --checkpoint, that the store still extends the checkpoint you hold.

    Exit 0 when everything is intact, 1 at the first broken link (edited, inserted or deleted
    row or batch, deleted tail, recomputed or deleted chain, forged checkpoint, a store rolled
    back or rewritten behind the held checkpoint).
    """
    if held_file is not None and public_key is None:
        raise UnusableInputError(
            f"`--checkpoint {held_file}` needs `--public-key`: a checkpoint proves nothing"
            " until its signature is checked."
        )
    key = load_public_key(public_key) if public_key is not None else None
    held = load_checkpoint(held_file) if held_file is not None else None
    with open_store(store_url, create=False) as store:
        result = store.verify(chain_id, public_key=key, held=held)
    broken = result.broken
    counts = {
        "ok": result.ok,
        "chains": result.chains,
        "batches": result.batches,
        "hops": result.hops,
        "signed_checkpoints": result.signed_checkpoints if key is not None else None,
    }
    if output_format == "json":
        document = {**counts, "broken": broken.to_dict() if broken is not None else None}
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    elif output_format == "csv":
        columns = [*counts, "chain_id", "seq", "index", "record_id", "kind", "description"]
        link = broken.to_dict() if broken is not None else {}
        click.echo(_csv(columns, [{**counts, **link}]), nl=False)
    else:
        signed = (
            f", {result.signed_checkpoints} signed checkpoints verified" if key is not None else ""
        )
        state = "ok" if broken is None else "BROKEN after"
        click.echo(
            f"{state}: {result.chains} chains, {result.batches} batches, {result.hops} hops{signed}"
        )
    if broken is not None:
        click.echo(f"lineage-guard: {shown(broken.description)}", err=True)
    sys.exit(ExitCode.OK if broken is None else ExitCode.VIOLATIONS)


# -- rendering ------------------------------------------------------------------------------

_EVENT_COLUMNS = [
    "at",
    "record_id",
    "stage",
    "decision",
    "reasons",
    "content_class",
    "origin_env",
    "tenant_id",
    "source_system",
    "generator",
    "parent_record_ids",
    "source_topic",
    "source_partition",
    "source_offset",
    "destination",
    "pipeline",
    "run_id",
    "chain_id",
    "seq",
    "index",
    "digest",
]


def _render_trace(result: queries.Trace, output_format: str) -> str:
    if output_format == "json":
        return json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n"
    if output_format == "csv":
        columns = ["depth", *_EVENT_COLUMNS, "chain_status", "redelivery"]
        return _csv(columns, [_flat(traced.to_dict()) for traced in result.events])
    headers = ["at", "record", "stage", "decision", "reasons", "class", "origin"]
    headers += ["tenant", "source", "destination", "guard", "batch"]
    rows = []
    for traced in result.events:
        event = traced.stored.event
        record = event.record_id or "-"
        if traced.depth:
            record = f"{record} (ancestor {traced.depth})"
        rows.append(
            [
                format_time(event.at),
                record,
                str(event.stage),
                str(event.decision),
                _rules(traced.stored),
                event.content_class or "-",
                event.origin_env or "-",
                event.tenant_id or "-",
                _source(traced.stored),
                event.destination or "-",
                event.pipeline,
                f"{traced.stored.seq}: {traced.chain.status}"
                + (" (re-delivery)" if traced.redelivery else ""),
            ]
        )
    lines = [render_table(f"Lineage of record {result.record_id}", headers, rows)]
    lines += [shown(chain.describe()) for chain in result.chains]
    if result.missing_ancestors:
        missing = ", ".join(f"`{shown(rid)}`" for rid in result.missing_ancestors)
        lines.append(f"ancestors without lineage events: {missing}")
    return "\n".join(lines) + "\n"


def _render_leaks(report: queries.LeakReport, output_format: str) -> Iterator[str]:
    """The report in chunks: a window may hold many blocked attempts, so JSON and CSV are
    written event by event instead of being built whole in memory."""
    if output_format == "json":
        destinations = report.production_destinations
        yield from _json_document(
            {
                "since": format_time(report.since) if report.since is not None else None,
                "until": format_time(report.until) if report.until is not None else None,
                "production_destinations": (
                    sorted(destinations) if destinations is not None else None
                ),
            },
            {
                "leaks": (leak.to_dict() for leak in report.leaks),
                "unconfirmed": (leak.to_dict() for leak in report.unconfirmed),
                "blocked": (stored.to_dict() for stored in report.blocked),
            },
        )
        return
    if output_format == "csv":
        columns = ["kind", *_EVENT_COLUMNS, "why"]
        rows = itertools.chain(
            ({"kind": "leak", **_flat(leak.to_dict())} for leak in report.leaks),
            ({"kind": "unconfirmed", **_flat(leak.to_dict())} for leak in report.unconfirmed),
            ({"kind": "blocked", **_flat(stored.to_dict())} for stored in report.blocked),
        )
        yield from _csv_chunks(columns, rows)
        return
    headers = ["at", "record", "class", "origin", "tenant", "source", "destination", "why"]
    leak_rows = [
        [*_leak_cells(leak.stored), "; ".join(reason.rule for reason in leak.why)]
        for leak in report.leaks
    ]
    unconfirmed_rows = [
        [*_leak_cells(leak.stored), "; ".join(reason.rule for reason in leak.why)]
        for leak in report.unconfirmed
    ]
    blocked_rows = [[*_leak_cells(stored), _rules(stored)] for stored in report.blocked]
    window = f"from {_when(report.since, 'the start')} until {_when(report.until, 'now')}"
    if leak_rows:
        yield render_table(f"LEAKS: delivered to production ({window})", headers, leak_rows)
    else:
        yield f"No leaks: nothing reached production that must not have ({window})."
    yield "\n"
    if unconfirmed_rows:
        title = f"SENT to production, never acknowledged: {len(unconfirmed_rows)}"
        yield render_table(title, headers, unconfirmed_rows)
        yield "\n"
    if blocked_rows:
        title = f"Leak attempts blocked by the guard: {len(blocked_rows)}"
        yield render_table(title, headers, blocked_rows)
    else:
        yield "No leak attempts blocked."
    yield "\n"


def _json_document(
    fields: dict[str, Any], arrays: dict[str, Iterable[dict[str, Any]]]
) -> Iterator[str]:
    """One JSON object written piece by piece: `fields`, then each array item by item."""

    def dump(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    yield "{\n" + ",\n".join(f"  {dump(key)}: {dump(value)}" for key, value in fields.items())
    for key, items in arrays.items():
        yield f",\n  {dump(key)}: ["
        empty = True
        for item in items:
            yield ("\n    " if empty else ",\n    ") + dump(item)
            empty = False
        yield "]" if empty else "\n  ]"
    yield "\n}\n"


def _leak_cells(stored: StoredEvent) -> list[str]:
    event = stored.event
    return [
        format_time(event.at),
        event.record_id or "-",
        event.content_class or "-",
        event.origin_env or "-",
        event.tenant_id or "-",
        _source(stored),
        event.destination or "-",
    ]


def _rules(stored: StoredEvent) -> str:
    return "; ".join(reason.rule for reason in stored.event.reasons) or "-"


def _source(stored: StoredEvent) -> str:
    event = stored.event
    return f"{event.source_topic}[{event.source_partition}]@{event.source_offset}"


def _when(at: datetime | None, unbounded: str) -> str:
    return format_time(at) if at is not None else unbounded


def _flat(document: dict[str, Any]) -> dict[str, Any]:
    """CSV cells: lists and objects as compact JSON."""
    return {
        key: json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if isinstance(value, list | dict)
        else value
        for key, value in document.items()
    }


def _csv(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    return "".join(_csv_chunks(columns, rows))


def _csv_chunks(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """CSV in chunks of 1000 rows, every cell neutralised against formula injection."""
    out = io.StringIO()
    writer = csv_cells.writer(out)
    writer.writerow(columns)
    for count, row in enumerate(rows, start=1):
        writer.writedicts(columns, [row])
        if count % 1000 == 0:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()


def render_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], *, plain: bool = False
) -> str:
    """A table as text: drawn by `rich` when installed (and `plain` is False), else aligned
    columns. Tables longer than `RICH_MAX_ROWS` are always plain: rich takes seconds on them.

    The cells are data, shown as written: never read as rich markup, control characters
    shown escaped (`shown`)."""
    title, headers = shown(title), [shown(header) for header in headers]
    rows = [[shown(cell) for cell in row] for row in rows]
    if not plain and len(rows) <= RICH_MAX_ROWS:
        try:
            from rich.console import Console
            from rich.table import Table
            from rich.text import Text
        except ImportError:
            pass
        else:
            terminal = sys.stdout.isatty()
            # Every cell and the title are `Text`, never markup: a record's `[/]` or
            # `[bold red]…[/bold red]` shows as written (rich also drops control codes).
            table = Table(title=Text(title), title_justify="left")
            for header in headers:
                table.add_column(Text(header), overflow="fold")
            for row in rows:
                table.add_row(*(Text(cell) for cell in row))
            out = io.StringIO()
            # Off a terminal nothing wraps: lines as long as the data, no colour codes.
            width = None if terminal else 100_000
            Console(file=out, width=width, force_terminal=terminal, highlight=False).print(table)
            lines = out.getvalue().rstrip("\n").split("\n")
            return "\n".join(line.rstrip() for line in lines)  # no padding after the title
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def shown(text: str) -> str:
    """`text` with every character a terminal would act on written as an escape (`\\x1b`)."""
    return text.translate(_TERMINAL_CONTROLS)


def _window(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """`--since` and `--until` parsed, and in order."""
    start, end = _time_option("--since", since), _time_option("--until", until)
    if start is not None and end is not None and start > end:
        raise UnusableInputError(f"`--since {since}` is after `--until {until}`.")
    return start, end


def _time_option(option: str, value: str | None) -> datetime | None:
    """An ISO-8601 time (`2026-11-27`, `2026-11-27T12:00:00Z`, …); no offset means UTC."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise UnusableInputError(
            f"Cannot read `{option} {value}`: not an ISO-8601 time; use e.g."
            " `2026-11-27T12:00:00Z` or `2026-11-27`."
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
