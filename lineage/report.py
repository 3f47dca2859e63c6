"""The auditor's evidence report: volumes, decisions over time, quarantine reasons, generators.

`build_report` streams a store's events once (nothing is held but counters) and returns a
`Report`; `write_report` writes it to a folder as `report.json`, one CSV per table, and
`report.html`: a single self-contained page (charts inlined as SVG by matplotlib, no script,
no network) that opens offline.
"""

from __future__ import annotations

import html
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lineage_guard.lineage import csv_cells
from lineage_guard.lineage.errors import UnusableInputError
from lineage_guard.lineage.events import BASIS, Decision, Stage
from lineage_guard.lineage.private import private_dir, write_private
from lineage_guard.lineage.store import LineageStore

STOPPING = {Decision.QUARANTINED, Decision.BLOCKED}


@dataclass(kw_only=True)
class Report:
    since: datetime | None
    until: datetime | None
    first: datetime | None = None
    last: datetime | None = None
    records: int = 0  # records read (one `source` event each, per run)
    by_content_class: Counter[str] = field(default_factory=Counter)
    by_origin_env: Counter[str] = field(default_factory=Counter)
    by_source_system: Counter[str] = field(default_factory=Counter)
    by_tenant: Counter[str] = field(default_factory=Counter)
    by_generator: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # delivered/quarantined/blocked
    # (generator, outcome) for AI-assisted and synthetic records: where generated content went
    generator_outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)  # (stage, rule)
    # (hour bucket ISO, outcome): decisions over time
    timeline: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (content class, stage, decision): every stage event, for the evidence pack
    by_class_stage: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def tables(self) -> dict[str, tuple[list[str], list[list[Any]]]]:
        """Every table of the report: name → (header, rows)."""

        def counts(counter: Counter[str], name: str) -> tuple[list[str], list[list[Any]]]:
            return [name, "records"], [[k, n] for k, n in counter.most_common()]

        return {
            "by_content_class": counts(self.by_content_class, "content_class"),
            "by_origin_env": counts(self.by_origin_env, "origin_env"),
            "by_source_system": counts(self.by_source_system, "source_system"),
            "by_tenant": counts(self.by_tenant, "tenant_id"),
            "by_generator": counts(self.by_generator, "generator"),
            "outcomes": counts(self.outcomes, "outcome"),
            "generator_outcomes": (
                ["generator", "outcome", "records"],
                [[g, o, n] for (g, o), n in sorted(self.generator_outcomes.items())],
            ),
            "top_reasons": (
                ["stage", "rule", "records"],
                [[s, r, n] for (s, r), n in self.reasons.most_common(20)],
            ),
            "timeline": (
                ["hour", "outcome", "records"],
                [[h, o, n] for (h, o), n in sorted(self.timeline.items())],
            ),
            "by_class_stage": (
                ["content_class", "stage", "decision", "records"],
                [[c, s, d, n] for (c, s, d), n in sorted(self.by_class_stage.items())],
            ),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "basis": BASIS,  # the guard's verdicts rest on the records' provenance block
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "first_event": self.first.isoformat() if self.first else None,
            "last_event": self.last.isoformat() if self.last else None,
            "records": self.records,
            "tables": {
                name: [dict(zip(header, row, strict=True)) for row in rows]
                for name, (header, rows) in self.tables().items()
            },
        }


def build_report(
    store: LineageStore, *, since: datetime | None = None, until: datetime | None = None
) -> Report:
    report = Report(since=since, until=until)
    for stored in store.events(since=since, until=until):
        e = stored.event
        report.first = e.at if report.first is None else min(report.first, e.at)
        report.last = e.at if report.last is None else max(report.last, e.at)
        report.by_class_stage[(e.content_class or "(unknown)", str(e.stage), str(e.decision))] += 1
        if e.stage == Stage.SOURCE:
            report.records += 1
            report.by_content_class[e.content_class or "(unknown)"] += 1
            report.by_origin_env[e.origin_env or "(unknown)"] += 1
            report.by_source_system[e.source_system or "(unknown)"] += 1
            report.by_tenant[e.tenant_id or "(unknown)"] += 1
            if e.generator:
                report.by_generator[e.generator] += 1
        if e.decision in STOPPING:
            for reason in e.reasons:
                if e.stage != Stage.WRITE:
                    report.reasons[(str(e.stage), reason.rule)] += 1
            if e.stage != Stage.WRITE:
                _outcome(report, e, str(e.decision))
        elif e.stage == Stage.WRITE and e.decision == Decision.DELIVERED:
            _outcome(report, e, "delivered")  # acknowledged by the destination
        elif e.stage == Stage.WRITE and e.decision == Decision.HANDED_ON:
            _outcome(report, e, "handed on")  # to the next transform of the same pipeline
        elif e.stage == Stage.WRITE and e.decision == Decision.SENDING:
            _outcome(report, e, "sent, unacknowledged")
        elif e.stage == Stage.WRITE and e.decision == Decision.FAILED:
            _outcome(report, e, "refused by destination")
    return report


def _outcome(report: Report, e: Any, outcome: str) -> None:
    report.outcomes[outcome] += 1
    hour = e.at.replace(minute=0, second=0, microsecond=0).isoformat()
    report.timeline[(hour, outcome)] += 1
    if e.generator and e.content_class in ("AI_ASSISTED", "SYNTHETIC"):
        report.generator_outcomes[(e.generator, outcome)] += 1


def write_report(report: Report, out_dir: Path, *, preface: str = "") -> dict[str, Path]:
    """Writes report.json, one CSV per table and report.html; returns their paths.

    The folder (and any parent it creates) is `0700`, the files `0600`: a report names
    tenants, generators and what happened to their records. CSV cells are neutralised
    against formula injection (`csv_cells`). Raises `UnusableInputError` when `out_dir`
    cannot be a folder."""
    try:
        private_dir(out_dir)
    except FileExistsError:
        raise UnusableInputError(
            f"Cannot write the report to `{out_dir}`: it exists and is not a folder."
        ) from None
    except OSError as exc:
        raise UnusableInputError(
            f"Cannot create the report folder `{out_dir}`: {exc.strerror or exc}."
        ) from None
    written = {"json": out_dir / "report.json", "html": out_dir / "report.html"}
    try:
        write_private(
            written["json"], json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"
        )
        for name, (header, rows) in report.tables().items():
            path = written[f"csv:{name}"] = out_dir / f"{name}.csv"
            text = io.StringIO()
            writer = csv_cells.writer(text)
            writer.writerow(header)
            writer.writerows(rows)
            write_private(path, text.getvalue())
        write_private(written["html"], render_html(report, preface=preface))
    except OSError as exc:
        raise UnusableInputError(
            f"Cannot write the report to `{out_dir}`: {exc.strerror or exc}."
        ) from None
    return written


OUTCOME_COLORS = {"delivered": "#2e7d32", "quarantined": "#c62828", "blocked": "#ef6c00"}


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog: the SVG is inlined in HTML


def _bar_chart(title: str, counter: Counter[str], color: str = "#1565c0") -> str:
    import matplotlib.pyplot as plt

    items = counter.most_common(12)[::-1]
    figure, axes = plt.subplots(figsize=(6, 0.4 * max(len(items), 2) + 1))
    axes.barh([k for k, _ in items], [n for _, n in items], color=color)
    axes.set_title(title)
    axes.set_xlabel("records")
    return _svg(figure)


def _timeline_chart(report: Report) -> str:
    import matplotlib.pyplot as plt

    hours = sorted({h for h, _ in report.timeline})
    figure, axes = plt.subplots(figsize=(7, 3))
    bottom = [0] * len(hours)
    from matplotlib.dates import date2num

    positions = [float(date2num(datetime.fromisoformat(h))) for h in hours]
    width = 0.8 / 24  # days: 80% of an hour
    axes.xaxis_date()
    for outcome in ("delivered", "quarantined", "blocked"):
        values = [report.timeline.get((h, outcome), 0) for h in hours]
        axes.bar(
            positions,
            values,
            width=width,
            bottom=bottom,
            label=outcome,
            color=OUTCOME_COLORS[outcome],
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_title("Decisions per hour")
    axes.set_ylabel("records")
    axes.legend()
    figure.autofmt_xdate()
    return _svg(figure)


def _generator_chart(report: Report) -> str:
    import matplotlib.pyplot as plt

    generators = sorted({g for g, _ in report.generator_outcomes})
    figure, axes = plt.subplots(figsize=(6, 0.5 * max(len(generators), 2) + 1))
    left = [0] * len(generators)
    for outcome in ("delivered", "quarantined", "blocked"):
        values = [report.generator_outcomes.get((g, outcome), 0) for g in generators]
        axes.barh(generators, values, left=left, label=outcome, color=OUTCOME_COLORS[outcome])
        left = [a + v for a, v in zip(left, values, strict=True)]
    axes.set_title("Generated content by generator: where it went")
    axes.set_xlabel("records")
    axes.legend()
    return _svg(figure)


def render_html(report: Report, *, preface: str = "") -> str:
    """The page; `preface` (HTML, escaped by its maker) goes first, e.g. the evidence pack's
    control table."""
    import matplotlib

    matplotlib.use("Agg")
    charts = []
    # Labels are data (generator names, rules): shown as written, never read as mathtext
    # (`$\\frac…$`) or handed to TeX, whatever the user's matplotlibrc says.
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        if report.records:
            charts = [
                _bar_chart("Records by content class", report.by_content_class),
                _timeline_chart(report) if report.timeline else "",
                _bar_chart(
                    "Top quarantine and block reasons",
                    Counter({f"{s}: {r}": n for (s, r), n in report.reasons.items()}),
                    color="#c62828",
                )
                if report.reasons
                else "",
                _generator_chart(report) if report.generator_outcomes else "",
            ]
    tables = "\n".join(
        _table(name, header, rows)
        for name, (header, rows) in report.tables().items()
        if name not in ("timeline", "by_class_stage")
    )
    span = (
        f"{report.first:%Y-%m-%d %H:%M} to {report.last:%Y-%m-%d %H:%M} UTC"
        if report.first and report.last
        else "no events"
    )
    blocked = report.outcomes.get("blocked", 0)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>lineage-guard evidence report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 72rem; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 1.5rem; }}
figure.chart {{ margin: 0; }} figure.chart svg {{ max-width: 100%; height: auto; }}
table {{ border-collapse: collapse; margin: 0 2rem 1.5rem 0; display: inline-table; }}
th, td {{ border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.kpi {{ display: inline-block; margin-right: 2rem; font-size: 1.2rem; }}
</style></head><body>
<h1>lineage-guard evidence report</h1>
{preface}
<p>Events from {html.escape(span)}. Every verdict rests on the records' metadata (their
provenance block), not on a watermark or forensic detection (basis: metadata).</p>
<p><span class="kpi">records read: <b>{report.records}</b></span>
<span class="kpi">delivered: <b>{report.outcomes.get("delivered", 0)}</b></span>
<span class="kpi">quarantined: <b>{report.outcomes.get("quarantined", 0)}</b></span>
<span class="kpi">blocked by sink policies: <b>{blocked}</b></span></p>
<div class="charts">
{"".join(f'<figure class="chart">{c}</figure>' for c in charts if c)}
</div>
<h2>Tables</h2>
{tables}
</body></html>
"""


def _table(name: str, header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = (
        "".join(
            "<tr>"
            + "".join(
                f'<td class="n">{v}</td>'
                if isinstance(v, int)
                else f"<td>{html.escape(str(v))}</td>"
                for v in row
            )
            + "</tr>"
            for row in rows
        )
        or f'<tr><td colspan="{len(header)}">none</td></tr>'
    )
    return (
        f"<table><caption>{html.escape(name.replace('_', ' '))}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )
