"""What validation says about a record: the values that travel with it to quarantine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lineage_guard.lineage.events import BASIS

__all__ = ["BASIS", "Verdict", "Violation"]


@dataclass(frozen=True, kw_only=True)
class Violation:
    rule: str  # e.g. "generator_required"
    column: str | None  # the record's field, dotted: "provenance.generator.name"
    message: str  # a sentence that names the record and the field

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "column": self.column, "message": self.message}


@dataclass(frozen=True, kw_only=True)
class Verdict:
    record_id: str | None
    violations: tuple[Violation, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.violations
