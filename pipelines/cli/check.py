"""`lineage-guard validate`: checks files of records against the suites, for CI jobs.

Streams every file in micro-batches through the same `SuiteValidator` the pipeline uses and
keeps only the rejected records (never the passing ones), then renders the result as text,
JSON (the CLI contract's keys) or JUnit XML.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineage_guard import guard_chain
from lineage_guard.arrow_batch import from_file_rows
from lineage_guard.contract.records import describe, record_id_of
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.contract.verdicts import BASIS, Violation
from lineage_guard.io.decode import Decoder
from lineage_guard.io.files import FileRecord, read_records
from lineage_guard.lineage.cli import shown

DEFAULT_BATCH_SIZE = 5000


@dataclass(frozen=True, kw_only=True)
class Rejection:
    file: str
    index: int
    record_id: str | None
    violations: tuple[Violation, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_id": self.record_id,
            "index": self.index,
            "file": self.file,
            "basis": BASIS,
            "violations": [v.to_dict() for v in self.violations],
        }


@dataclass(kw_only=True)
class CheckResult:
    total: int = 0
    files: dict[str, int] = field(default_factory=dict)  # records per file, in order
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return self.total - len(self.rejected)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "passed": self.passed,
            "basis": BASIS,  # every verdict rests on the records' provenance metadata
            "rejected": [r.to_dict() for r in self.rejected],
        }


def check_files(
    paths: Sequence[Path],
    validator: SuiteValidator,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> CheckResult:
    """Validates every record of every file; `on_progress` gets bytes read since last call."""
    result = CheckResult()
    for path in paths:
        result.files[str(path)] = 0
        position = [0]
        reported = 0
        batch: list[FileRecord] = []
        for record in read_records(path, position=position):
            batch.append(record)
            if len(batch) >= batch_size:
                _check_batch(batch, validator, result)
                batch = []
                if on_progress is not None:
                    on_progress(position[0] - reported)
                    reported = position[0]
        _check_batch(batch, validator, result)
        if on_progress is not None:
            on_progress(max(path.stat().st_size - reported, 0))  # a FIFO's size is 0
    return result


def _check_batch(batch: list[FileRecord], validator: SuiteValidator, result: CheckResult) -> None:
    """The guard chain's decode and validate (`guard_chain`), as `run` applies them to the
    same records: the same rules and messages."""
    if not batch:
        return
    file = batch[0].file
    checked = from_file_rows(
        file, [r.index for r in batch], [r.value for r in batch], [r.error for r in batch]
    )
    checked = guard_chain.validate(guard_chain.decode(checked, _NO_BYTES), validator)
    result.total += len(batch)
    result.files[file] += len(batch)
    for row in sorted(checked.violations):
        record = batch[row]
        result.rejected.append(
            Rejection(
                file=record.file,
                index=record.index,
                record_id=record_id_of(record.value) if record.error is None else None,
                violations=checked.violations[row],
            )
        )


_NO_BYTES = Decoder()  # file rows hold records: nothing is read from bytes


def render_text(result: CheckResult) -> str:
    """One line per rejected record and per violation; record data shown with its control
    characters escaped, so a field cannot restyle or rewrite the CI log."""
    lines = []
    for r in result.rejected:
        lines.append(shown(f"{r.file}[{r.index}] {describe(r.record_id)} REJECTED"))
        lines.extend(shown(f"    {v.rule}: {v.message}") for v in r.violations)
    files = len(result.files)
    lines.append(
        f"{result.total} records in {files} file{'s' * (files != 1)}: "
        f"{result.passed} passed, {len(result.rejected)} rejected."
    )
    return "\n".join(lines) + "\n"


def render_json(result: CheckResult) -> str:
    return json.dumps(result.to_dict(), ensure_ascii=False) + "\n"


def render_junit(result: CheckResult) -> str:
    """JUnit XML: a test suite per file, a failing test case per rejected record, and one
    passing test case for a file whose records all passed."""
    by_file: dict[str, list[Rejection]] = {name: [] for name in result.files}
    for r in result.rejected:
        by_file[r.file].append(r)
    cases = sum(max(len(rejections), 1) for rejections in by_file.values())
    root = ET.Element(
        "testsuites",
        name="lineage-guard validate",
        tests=str(cases),
        failures=str(len(result.rejected)),
    )
    for name, rejections in by_file.items():
        count = result.files[name]
        suite = ET.SubElement(
            root,
            "testsuite",
            name=name,
            tests=str(max(len(rejections), 1)),
            failures=str(len(rejections)),
        )
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="basis", value=BASIS)
        if not rejections:
            ET.SubElement(
                suite,
                "testcase",
                classname=name,
                name=f"all {count} records carry intact provenance",
            )
        for r in rejections:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=name,
                name=f"[{r.index}] {r.record_id or 'record without record_id'}",
            )
            failure = ET.SubElement(
                case,
                "failure",
                message="; ".join(v.rule for v in r.violations),
                type="ProvenanceViolation",
            )
            failure.text = "\n".join(f"{v.rule}: {v.message}" for v in r.violations)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


RENDERERS: dict[str, Callable[[CheckResult], str]] = {
    "text": render_text,
    "json": render_json,
    "junit": render_junit,
}
