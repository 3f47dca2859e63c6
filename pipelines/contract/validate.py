"""Validates micro-batches of decoded records with the Great Expectations suites.

The suites in `expectations/` are the single source of truth: this module only flattens the
records, runs every suite once over the whole batch, and turns each failing row of each
expectation into a `Violation`, using the rule name and message the expectation carries in
its `meta`. The engine is built once per validator (once per worker), never per batch or per
record: GX itself over pandas (flattened by `contract.records`, the reference), or the same
suites compiled into Arrow kernels over Arrow columns (`contract.columns`,
`contract.compiled_suite`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from lineage_guard.contract.records import (
    FIELD_OF_COLUMN,
    Flattener,
    ParentRanks,
    as_qcode,
    describe,
    shorten,
)
from lineage_guard.contract.verdicts import Verdict, Violation
from lineage_guard.lineage.errors import ConfigError

if TYPE_CHECKING:
    from lineage_guard.contract.columns import ArrowColumns, ArrowFlattener

log = logging.getLogger(__name__)

FUTURE_TOLERANCE_MS = 5 * 60 * 1000  # generated_at may be at most 5 minutes ahead of now


@dataclass(frozen=True, kw_only=True)
class _Rule:
    rule: str
    field: str | None
    message: str


def _rule_of(expectation: dict[str, Any]) -> _Rule:
    """The rule an expectation reports, from its `meta` (with fallbacks for plain suites)."""
    meta = expectation.get("meta") or {}
    kind = str(expectation.get("type"))
    column = (expectation.get("kwargs") or {}).get("column")
    return _Rule(
        rule=meta.get("rule", kind),
        field=meta.get("field", FIELD_OF_COLUMN.get(column or "", column)),
        message=meta.get("message", f"fails {kind}"),
    )


def load_suite_documents() -> list[dict[str, Any]]:
    """Every suite JSON shipped in `expectations/`, sorted by file name."""
    folder = resources.files("lineage_guard.expectations")
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


def suite_rules(documents: Sequence[dict[str, Any]] | None = None) -> list[tuple[str, str | None]]:
    """Every rule the suites report, with the record field it checks, in suite order."""
    rules: dict[str, str | None] = {}
    for document in documents or load_suite_documents():
        for expectation in document.get("expectations", []):
            rule = _rule_of(expectation)
            rules.setdefault(rule.rule, rule.field)
    return list(rules.items())


def _now_millis() -> float:
    return time.time() * 1000


Failures = Iterator[tuple[int, list[int]]]  # (expectation number, failing rows)


class GxEngine:
    """Runs the suites with Great Expectations over a pandas DataFrame: the reference."""

    def __init__(self, documents: Sequence[dict[str, Any]]) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        context = gx.get_context(mode="ephemeral", project_config=config)
        asset = context.data_sources.add_pandas("lineage_guard").add_dataframe_asset("records")
        self._batch_definition = asset.add_batch_definition_whole_dataframe("micro_batch")
        self._suites = []
        self._number: dict[str, int] = {}  # GX's expectation id → its number in `documents`
        number = 0
        for document in documents:
            try:
                suite = context.suites.add(gx.ExpectationSuite(**document))
            except Exception as exc:  # GX raises many types for a malformed suite
                name = document.get("name", "?")
                raise ConfigError(f"Suite `{name}` is not a valid GX suite: {exc}") from exc
            for expectation in suite.expectations:
                self._number[str(expectation.id)] = number
                number += 1
            self._suites.append(suite)

    @staticmethod
    def flattener(parents: ParentRanks | None) -> Flattener:
        return Flattener(parents)

    def failures(self, columns: dict[str, list[Any]], parameters: dict[str, Any]) -> Failures:
        import pandas as pd

        frame = pd.DataFrame(columns)
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
                rows = outcome.result.get("unexpected_index_list") or []
                yield self._number[str(config.id)], [int(i) for i in rows]


class CompiledEngine:
    """Runs the same suite documents as Arrow kernels (`contract.compiled_suite`) over the
    batch's Arrow columns (`contract.columns`)."""

    def __init__(self, documents: Sequence[dict[str, Any]]) -> None:
        from lineage_guard.contract.compiled_suite import compile_expectation

        self._checks = [
            compile_expectation(expectation)
            for document in documents
            for expectation in document.get("expectations", [])
        ]

    @staticmethod
    def flattener(parents: ParentRanks | None) -> ArrowFlattener:
        from lineage_guard.contract.columns import ArrowFlattener

        return ArrowFlattener(parents)

    def failures(self, columns: ArrowColumns, parameters: dict[str, Any]) -> Failures:
        import pyarrow.compute as pc

        for number, check in enumerate(self._checks):
            failing = check(columns, parameters)
            if failing.true_count:
                yield number, pc.indices_nonzero(failing).to_pylist()


ENGINES: dict[str, type[GxEngine] | type[CompiledEngine]] = {
    "compiled": CompiledEngine,
    "gx": GxEngine,
}


class SuiteValidator:
    """Runs the suites over batches of records; one instance per worker.

    `engine="gx"` runs Great Expectations itself (the reference, used in CI);
    `engine="compiled"` (the default) runs the same suite JSON compiled into column checks,
    proven to agree with GX by property-based tests.
    """

    def __init__(
        self,
        suite_documents: Sequence[dict[str, Any]] | None = None,
        *,
        engine: str = "compiled",
        clock: Callable[[], float] = _now_millis,
        parents: ParentRanks | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise ConfigError(f"Unknown validation engine `{engine}`: use `compiled` or `gx`.")
        documents = list(suite_documents or load_suite_documents())
        self._clock = clock
        self._engine: GxEngine | CompiledEngine = ENGINES[engine](documents)
        self._flattener = self._engine.flattener(parents)
        self._rules = [
            _rule_of(expectation)
            for document in documents
            for expectation in document.get("expectations", [])
        ]

    def validate(
        self, records: Sequence[Any], parent_ranks: Mapping[str, int] | None = None
    ) -> list[Verdict]:
        """One verdict per record, in order. Records are decoded Avro/JSON values.

        `parent_ranks` (record id → class rank) are the parents the caller knows of; without
        it, parents are the records this validator has seen before, in order.
        """
        if not records:
            return []
        ids, found = self._check(records, parent_ranks)
        return [
            Verdict(record_id=rid, violations=found[i]) if i in found else Verdict(record_id=rid)
            for i, rid in enumerate(ids)
        ]

    def failures(
        self, records: Sequence[Any], parent_ranks: Mapping[str, int] | None = None
    ) -> dict[int, tuple[Violation, ...]]:
        """As `validate`, for the failing records only: their position → their violations
        (a batch that passes costs no object per record)."""
        if not records:
            return {}
        return self._check(records, parent_ranks)[1]

    def _check(
        self, records: Sequence[Any], parent_ranks: Mapping[str, int] | None
    ) -> tuple[list[Any], dict[int, tuple[Violation, ...]]]:
        columns, type_errors = self._flattener.flatten(records, parent_ranks)
        return self._judge(columns, type_errors, all_ids=True)

    def flatten(
        self, records: Sequence[Any], parent_ranks: Mapping[str, int]
    ) -> tuple[ArrowColumns, dict[int, list[Violation]]]:
        """The records as the compiled engine's Arrow columns (`contract.columns`), with
        their `wrong_type` violations by position."""
        from lineage_guard.contract.columns import ArrowFlattener

        return ArrowFlattener().flatten(records, parent_ranks)

    def failures_of_columns(
        self, columns: ArrowColumns, type_errors: Mapping[int, list[Violation]]
    ) -> dict[int, tuple[Violation, ...]]:
        """As `failures`, for records already flattened into Arrow columns (`flatten`, or
        decoded straight into them)."""
        if isinstance(self._engine, GxEngine):  # GX reads the reference's Python lists
            lists = {name: values.to_pylist() for name, values in columns.items()}
            return self._judge(lists, type_errors)[1]
        return self._judge(columns, type_errors)[1]

    def _judge(
        self, columns: Any, type_errors: Mapping[int, list[Violation]], *, all_ids: bool = False
    ) -> tuple[list[Any], dict[int, tuple[Violation, ...]]]:
        """Failing rows → their violations; with `all_ids`, also every row's record id (else
        an empty list: the ids of failing rows are read alone)."""
        parameters = {"latest_allowed_generated_at": self._clock() + FUTURE_TOLERANCE_MS}
        found: dict[int, list[Violation]] = {i: list(v) for i, v in type_errors.items()}
        failures = list(self._engine.failures(columns, parameters))
        ids = _values(columns["record_id"]) if all_ids else []
        if all_ids:
            id_of = dict(enumerate(ids))
        else:
            failing = sorted({row for _, rows in failures for row in rows})
            id_of = dict(zip(failing, _take(columns["record_id"], failing), strict=True))
        for number, rows in failures:
            rule = self._rules[number]
            column = _COLUMN_OF_FIELD.get(rule.field or "")
            values = _take(columns[column], rows) if column is not None else [None] * len(rows)
            for row, value in zip(rows, values, strict=True):
                found.setdefault(row, []).append(self._violation(rule, id_of[row], value))
        return ids, {i: tidy for i, v in found.items() if (tidy := _tidy(v))}

    @staticmethod
    def _violation(rule: _Rule, record_id: str | None, value: Any) -> Violation:
        message = f"{describe(record_id)}: {rule.message}"
        if isinstance(value, str):
            message += f" (`{rule.field}` is {shorten(as_qcode(value))!r})"
        elif rule.field:
            message += f" (`{rule.field}`)"
        return Violation(rule=rule.rule, column=rule.field, message=message + ".")


Columns = Mapping[str, Any]  # a list per column (GX engine) or a `pyarrow.Array` (compiled)
_COLUMN_OF_FIELD: dict[str, str] = {}
for _column, _field in FIELD_OF_COLUMN.items():
    _COLUMN_OF_FIELD.setdefault(_field, _column)


def _values(values: Any) -> list[Any]:
    return values if isinstance(values, list) else values.to_pylist()


def _take(values: Any, rows: list[int]) -> list[Any]:
    """The values at `rows` of a column (a list, or a `pyarrow.Array`)."""
    if isinstance(values, list):
        return [values[row] for row in rows]
    import pyarrow as pa

    return values.take(pa.array(rows, pa.int64())).to_pylist()


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
