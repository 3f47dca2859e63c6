"""A fast path for the GX suites: the same suite JSON, compiled into plain column checks.

Great Expectations costs tens to hundreds of milliseconds per validation run whatever the batch
size, which caps the guard's throughput. This module reads the *same* suite documents and
compiles each expectation into a function over the flattened columns that returns the failing
row indices, with GX's pandas semantics (nulls are skipped by column-map expectations, regexes
use Python's `re.search` as pandas' `str.contains` does, row conditions filter first).

Only the expectation types and row conditions the contract uses are supported; a suite that
uses anything else raises `ConfigError` and must run with `--engine gx`. The property-based
tests in `tests/unit/test_compiled_suite.py` check that both engines return exactly the same
failing rows on randomized batches. Pure: no GX, no pandas.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lineage_guard.lineage.errors import ConfigError

Columns = Mapping[str, Sequence[Any]]
Check = Callable[[Columns, Mapping[str, Any]], list[int]]
RowFilter = Callable[[Columns, int], list[bool]]


def is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def compile_expectation(expectation: Mapping[str, Any]) -> Check:
    kind = expectation.get("type")
    kwargs = dict(expectation.get("kwargs") or {})
    condition = kwargs.pop("row_condition", None)
    kwargs.pop("condition_parser", None)
    kwargs.pop("result_format", None)
    rows_of = _row_filter(condition) if condition is not None else None
    build = _BUILDERS.get(str(kind))
    if build is None:
        raise ConfigError(
            f"Expectation type `{kind}` has no compiled form; run with `--engine gx`."
        )
    if kwargs.get("mostly", 1) != 1:
        raise ConfigError(
            f"`mostly` is not supported by the compiled engine (`{kind}`); run with `--engine gx`."
        )
    kwargs.pop("mostly", None)
    row_check = build(kwargs)

    def check(columns: Columns, parameters: Mapping[str, Any]) -> list[int]:
        size = len(next(iter(columns.values()))) if columns else 0
        rows: Sequence[int] = range(size)
        if rows_of is not None:
            keep = rows_of(columns, size)
            rows = [i for i in rows if keep[i]]
        return row_check(columns, parameters, rows)

    return check


def _parameter(value: Any, parameters: Mapping[str, Any]) -> Any:
    if isinstance(value, Mapping) and "$PARAMETER" in value:
        name = value["$PARAMETER"]
        if name not in parameters:
            raise ConfigError(f"Suite parameter `{name}` has no value.")
        return parameters[name]
    return value


def _not_null(kwargs: dict[str, Any]) -> Any:
    column = _only(kwargs, "column")

    def run(columns: Columns, parameters: Mapping[str, Any], rows: Sequence[int]) -> list[int]:
        values = columns[column]
        return [i for i in rows if is_null(values[i])]

    return run


def _match_regex(kwargs: dict[str, Any]) -> Any:
    column = _only(kwargs, "column", "regex")
    search = re.compile(kwargs["regex"]).search

    def run(columns: Columns, parameters: Mapping[str, Any], rows: Sequence[int]) -> list[int]:
        values = columns[column]
        return [
            i
            for i in rows
            if not is_null(v := values[i]) and search(v if isinstance(v, str) else str(v)) is None
        ]

    return run


def _in_set(kwargs: dict[str, Any]) -> Any:
    column = _only(kwargs, "column", "value_set")
    allowed = list(kwargs["value_set"])

    def run(columns: Columns, parameters: Mapping[str, Any], rows: Sequence[int]) -> list[int]:
        values = columns[column]
        return [i for i in rows if not is_null(v := values[i]) and v not in allowed]

    return run


def _between(kwargs: dict[str, Any]) -> Any:
    column = _only(kwargs, "column", "min_value", "max_value", "strict_min", "strict_max")
    strict_min, strict_max = bool(kwargs.get("strict_min")), bool(kwargs.get("strict_max"))

    def run(columns: Columns, parameters: Mapping[str, Any], rows: Sequence[int]) -> list[int]:
        low = _parameter(kwargs.get("min_value"), parameters)
        high = _parameter(kwargs.get("max_value"), parameters)
        values = columns[column]
        failing = []
        for i in rows:
            v = values[i]
            if is_null(v):
                continue
            if (low is not None and (v <= low if strict_min else v < low)) or (
                high is not None and (v >= high if strict_max else v > high)
            ):
                failing.append(i)
        return failing

    return run


def _a_greater_than_b(kwargs: dict[str, Any]) -> Any:
    _only(kwargs, "column_A", "column_B", "or_equal", "ignore_row_if")
    a, b = kwargs["column_A"], kwargs["column_B"]
    or_equal = bool(kwargs.get("or_equal"))
    ignore = kwargs.get("ignore_row_if", "both_values_are_missing")
    if ignore not in ("both_values_are_missing", "either_value_is_missing", "neither"):
        raise ConfigError(f"ignore_row_if `{ignore}` has no compiled form.")

    def run(columns: Columns, parameters: Mapping[str, Any], rows: Sequence[int]) -> list[int]:
        left, right = columns[a], columns[b]
        failing = []
        for i in rows:
            x, y = left[i], right[i]
            missing = (is_null(x), is_null(y))
            if (ignore == "either_value_is_missing" and any(missing)) or (
                ignore == "both_values_are_missing" and all(missing)
            ):
                continue
            if any(missing) or not (x >= y if or_equal else x > y):
                failing.append(i)
        return failing

    return run


_BUILDERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "expect_column_values_to_not_be_null": _not_null,
    "expect_column_values_to_match_regex": _match_regex,
    "expect_column_values_to_be_in_set": _in_set,
    "expect_column_values_to_be_between": _between,
    "expect_column_pair_values_a_to_be_greater_than_b": _a_greater_than_b,
}


def _only(kwargs: dict[str, Any], *allowed: str) -> Any:
    extra = set(kwargs) - set(allowed)
    if extra:
        raise ConfigError(
            f"Expectation arguments {sorted(extra)} have no compiled form; run with `--engine gx`."
        )
    return kwargs.get(allowed[0])


def _row_filter(condition: Any) -> RowFilter:
    """GX's pandas semantics for `Condition` documents (comparison, nullity, and, or)."""
    if not isinstance(condition, Mapping):
        raise ConfigError(
            f"Row condition `{condition}` is a string; the compiled engine takes "
            "GX Condition objects (or run with `--engine gx`)."
        )
    kind = condition.get("type")
    if kind in ("and", "or"):
        parts = [_row_filter(c) for c in condition.get("conditions", [])]
        combine = all if kind == "and" else any

        def both(columns: Columns, size: int) -> list[bool]:
            results = [part(columns, size) for part in parts]
            return [combine(r[i] for r in results) for i in range(size)]

        return both
    column = str((condition.get("column") or {}).get("name"))
    if kind == "nullity":
        wanted = bool(condition.get("is_null"))
        return lambda columns, size: [is_null(v) == wanted for v in columns[column]]
    if kind != "comparison":
        raise ConfigError(f"Row condition type `{kind}` has no compiled form.")
    operator, parameter = condition.get("operator"), condition.get("parameter")
    test = _COMPARISONS.get(str(operator))
    if test is None:
        raise ConfigError(f"Row condition operator `{operator}` has no compiled form.")
    return lambda columns, size: [test(v, parameter) for v in columns[column]]


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def test(value: Any, parameter: Any) -> bool:
        if is_null(value):
            return False
        try:
            return compare(value, parameter)
        except TypeError:
            return False

    return test


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda v, p: not is_null(v) and v == p,
    "!=": lambda v, p: is_null(v) or v != p,
    "IN": lambda v, p: not is_null(v) and v in p,
    "NOT_IN": lambda v, p: is_null(v) or v not in p,
    "<": _ordered(lambda v, p: v < p),
    "<=": _ordered(lambda v, p: v <= p),
    ">": _ordered(lambda v, p: v > p),
    ">=": _ordered(lambda v, p: v >= p),
}
