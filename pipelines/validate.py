"""Validates micro-batches of decoded records with the Great Expectations suites.

The suites in `expectations/` are the single source of truth: this module only flattens the
records (`pipelines.records`), runs every suite once over the whole batch, and turns each
failing row of each expectation into a `Violation`, using the rule name and message the
expectation carries in its `meta`. The GX context and suites are built once per validator
(once per worker), never per batch or per record.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lineage.errors import ConfigError
from pipelines.records import FIELD_OF_COLUMN, Flattener, ParentRanks, describe, record_id_of
from pipelines.verdicts import Verdict, Violation

log = logging.getLogger(__name__)

FUTURE_TOLERANCE_MS = 5 * 60 * 1000  # generated_at may be at most 5 minutes ahead of now


@dataclass(frozen=True, kw_only=True)
class _Rule:
    rule: str
    field: str | None
    message: str


def load_suite_documents() -> list[dict[str, Any]]:
    """Every suite JSON shipped in `expectations/`, sorted by file name."""
    folder = resources.files("lineage_guard_data.expectations")
    documents = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            try:
                documents.append(json.loads(entry.read_text(encoding="utf-8")))
            except ValueError as exc:
                raise ConfigError(f"Suite `expectations/{entry.name}` is not JSON: {exc}") from exc
    if not documents:
        raise ConfigError("No expectation suites found in `expectations/`.")
    return documents


def _now_millis() -> float:
    return time.time() * 1000


class SuiteValidator:
    """Runs the GX suites over batches of records; one instance per worker."""

    def __init__(
        self,
        suite_documents: Sequence[dict[str, Any]] | None = None,
        *,
        clock: Callable[[], float] = _now_millis,
        parents: ParentRanks | None = None,
    ) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self._clock = clock
        self._flattener = Flattener(parents)
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        context = gx.get_context(mode="ephemeral", project_config=config)
        asset = context.data_sources.add_pandas("lineage_guard").add_dataframe_asset("records")
        self._batch_definition = asset.add_batch_definition_whole_dataframe("micro_batch")
        self._suites = []
        self._rules: dict[str, _Rule] = {}
        for document in suite_documents or load_suite_documents():
            try:
                suite = context.suites.add(gx.ExpectationSuite(**document))
            except Exception as exc:  # GX raises many types for a malformed suite
                name = document.get("name", "?")
                raise ConfigError(f"Suite `{name}` is not a valid GX suite: {exc}") from exc
            for expectation in suite.expectations:
                meta = expectation.meta or {}
                column = getattr(expectation, "column", None)
                self._rules[str(expectation.id)] = _Rule(
                    rule=meta.get("rule", expectation.expectation_type),
                    field=meta.get("field", FIELD_OF_COLUMN.get(column or "", column)),
                    message=meta.get("message", f"fails {expectation.expectation_type}"),
                )
            self._suites.append(suite)

    def validate(self, records: Sequence[Any]) -> list[Verdict]:
        """One verdict per record, in order. Records are decoded Avro/JSON values."""
        if not records:
            return []
        import pandas as pd

        columns, type_errors = self._flattener.flatten(records)
        frame = pd.DataFrame(columns)
        parameters = {"latest_allowed_generated_at": self._clock() + FUTURE_TOLERANCE_MS}
        found: dict[int, list[Violation]] = {i: list(v) for i, v in type_errors.items()}
        batch = self._batch_definition.get_batch(batch_parameters={"dataframe": frame})
        for suite in self._suites:
            result = batch.validate(
                suite, result_format="COMPLETE", expectation_parameters=parameters
            )
            for outcome in result.results:
                if outcome.success:
                    continue
                config = outcome.expectation_config
                assert config is not None  # GX always reports the expectation it ran
                if error := _raised(outcome.exception_info):
                    raise ConfigError(
                        f"Expectation `{config.type}` in suite `{suite.name}` failed to run: "
                        f"{error}"
                    )
                rule = self._rules[str(config.id)]
                for index in outcome.result.get("unexpected_index_list") or []:
                    row = int(index)
                    found.setdefault(row, []).append(
                        self._violation(rule, records[row], columns, row)
                    )
        return [
            Verdict(record_id=record_id_of(record), violations=_tidy(found.get(i, [])))
            for i, record in enumerate(records)
        ]

    @staticmethod
    def _violation(rule: _Rule, record: Any, columns: dict[str, list[Any]], row: int) -> Violation:
        message = f"{describe(record_id_of(record))}: {rule.message}"
        column = next((c for c, f in FIELD_OF_COLUMN.items() if f == rule.field), None)
        value = columns[column][row] if column in columns else None
        if isinstance(value, str):
            shown = value if len(value) <= 40 else value[:39] + "…"
            message += f" (`{rule.field}` is {shown!r})"
        elif rule.field:
            message += f" (`{rule.field}`)"
        return Violation(rule=rule.rule, column=rule.field, message=message + ".")


def _raised(info: Any) -> str | None:
    """The exception message GX recorded for an expectation, if it raised one.

    GX reports `{"raised_exception": …}` either directly or keyed by metric, depending on where
    the failure happened.
    """
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "unknown error")
    for nested in info.values():
        if message := _raised(nested):
            return message
    return None


def _tidy(violations: list[Violation]) -> tuple[Violation, ...]:
    """Drops violations that only restate another one.

    A field with a `wrong_type` violation was blanked, so "missing" reports on it add nothing;
    a record whose whole provenance is missing needs no report per provenance field.
    """
    if not violations:
        return ()
    mistyped = {v.column for v in violations if v.rule == "wrong_type"}
    stripped = any(v.rule == "provenance_missing" for v in violations)
    kept = []
    for v in violations:
        if v.rule != "wrong_type" and v.column in mistyped:
            continue
        in_provenance = (v.column or "").startswith("provenance.")
        if stripped and v.rule != "provenance_missing" and in_provenance:
            continue
        kept.append(v)
    return tuple(kept)
