"""CSV that spreadsheets read as text: every CSV lineage-guard writes goes through `writer`.

Record fields (tenant ids, source systems, generator names) come from the guarded data, so a
hostile value such as `=HYPERLINK(…)` must not become a formula when an auditor opens a report
in Excel or LibreOffice. Following OWASP's CSV Injection guidance
(https://owasp.org/www-community/attacks/CSV_Injection):

- a text cell that begins with `=`, `+`, `-`, `@`, tab (0x09), carriage return (0x0D) or line
  feed (0x0A) gets a single quote (`'`) in front, so it is read as text;
- every cell is wrapped in double quotes, and a double quote inside it is doubled, so a field
  separator (`,` or `;`, whichever the spreadsheet assumes) or a quote inside a value can never
  start a new cell with a dangerous character in front.

Numbers we compute (counts, offsets) are written as numbers: they are not data from records.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from typing import IO, Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


def neutralise(value: Any) -> Any:
    """`value` as a spreadsheet shows it as text: `'` before a text cell that could start a
    formula; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class SafeWriter:
    """`csv.writer` with every cell neutralised and quoted (see the module's docstring)."""

    def __init__(self, handle: IO[str]) -> None:
        self._writer = csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n")

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([neutralise(cell) for cell in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)

    def writedicts(self, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
        """One row per dict, in `columns` order (missing keys are empty, others ignored)."""
        for row in rows:
            self.writerow(row.get(column, "") for column in columns)


def writer(handle: IO[str]) -> SafeWriter:
    return SafeWriter(handle)
