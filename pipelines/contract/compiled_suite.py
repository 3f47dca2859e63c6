"""A fast path for the GX suites: the same suite JSON, compiled into vectorised Arrow kernels.

Great Expectations costs tens to hundreds of milliseconds per validation run whatever the batch
size, which caps the guard's throughput. This module reads the *same* suite documents and
compiles each expectation into a function over the batch's Arrow columns
(`contract.columns`) that returns a boolean mask of the failing rows, computed with
`pyarrow.compute` kernels and GX's pandas semantics:

- column-map expectations skip nulls (and NaN), row conditions filter first;
- `match_regex` is `re.search`, as pandas' `str.contains`: the pattern is translated to RE2
  where both engines mean the same (`\\S` and `\\s` become Python's Unicode whitespace class,
  `\\Z` becomes `\\z`); a pattern with anything whose meaning differs (`\\d`, `\\w`, `$`,
  look-arounds…) is run with Python's `re` over that column instead, never approximated;
- `in_set` is `pc.is_in` (`not_in_set` its opposite), `between` two comparisons, the column
  pair a comparison with GX's `ignore_row_if` rules.

Only the expectation types and row conditions the contract uses are supported; a suite that
uses anything else raises `ConfigError` and must run with `--engine gx`. The property-based
tests in `tests/unit/test_compiled_suite.py` check that both engines return exactly the same
verdicts on randomized batches. No GX, no pandas.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lineage_guard.lineage.errors import ConfigError

Columns = Mapping[str, pa.Array]
Check = Callable[[Columns, Mapping[str, Any]], pa.BooleanArray]  # True where a row fails
RowFilter = Callable[[Columns], pa.BooleanArray]  # True where the expectation applies
# Up to this many rows, `match_regex` runs Python's `re` (the reference) even where RE2 means
# the same: `pc.match_substring_regex` compiles its pattern on every call, ~30 µs, while `re`
# keeps it compiled (a gateway request of one record ran six patterns: ~180 µs of ~700).
FEW_ROWS = 32


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
    failing = build(kwargs)
    if rows_of is None:
        return failing

    def check(columns: Columns, parameters: Mapping[str, Any]) -> pa.BooleanArray:
        rows = rows_of(columns)
        if not rows.true_count:  # no row applies (as GX, which filters first): none fails
            return rows
        return pc.and_(rows, failing(columns, parameters))

    return check


def _parameter(value: Any, parameters: Mapping[str, Any]) -> Any:
    if isinstance(value, Mapping) and "$PARAMETER" in value:
        name = value["$PARAMETER"]
        if name not in parameters:
            raise ConfigError(f"Suite parameter `{name}` has no value.")
        return parameters[name]
    return value


def _present(values: pa.Array) -> pa.BooleanArray:
    return pc.invert(pc.is_null(values, nan_is_null=True))


def _all_present(values: pa.Array) -> bool:
    """Whether every row has a value (no null, and no NaN where there can be one): then the
    masks of `_present` are all true and need not be computed (a pass over one record costs
    a kernel call per mask, whatever its length)."""
    return values.null_count == 0 and not pa.types.is_floating(values.type)


def _filled(mask: pa.Array, value: bool) -> pa.BooleanArray:
    return pc.fill_null(mask, value) if mask.null_count else mask


def _where_present(values: pa.Array, fails: pa.Array) -> pa.BooleanArray:
    """`fails` on the rows that have a value (null results count as passing)."""
    if _all_present(values):
        return _filled(fails, False)
    return pc.fill_null(pc.and_(_present(values), fails), False)


def _not_null(kwargs: dict[str, Any]) -> Check:
    column = _only(kwargs, "column")
    return lambda columns, parameters: pc.is_null(columns[column], nan_is_null=True)


def _match_regex(kwargs: dict[str, Any]) -> Check:
    column = _only(kwargs, "column", "regex")
    pattern = str(kwargs["regex"])
    search = re.compile(pattern).search
    translated = to_re2(pattern)

    def in_arrow(columns: Columns, parameters: Mapping[str, Any]) -> pa.BooleanArray:
        values = columns[column]
        if len(values) <= FEW_ROWS:  # Arrow compiles the pattern anew on each call
            return in_python(columns, parameters)
        return _where_present(values, pc.invert(pc.match_substring_regex(values, translated)))

    def in_python(columns: Columns, parameters: Mapping[str, Any]) -> pa.BooleanArray:
        return pa.array(
            [v is not None and search(v) is None for v in columns[column].to_pylist()],
            pa.bool_(),
        )

    return in_arrow if translated is not None else in_python


def _in_set(kwargs: dict[str, Any]) -> Check:
    column = _only(kwargs, "column", "value_set")
    allowed = _value_sets(kwargs["value_set"])

    def run(columns: Columns, parameters: Mapping[str, Any]) -> pa.BooleanArray:
        values = columns[column]
        return _where_present(values, pc.invert(pc.is_in(values, allowed(values))))

    return run


def _not_in_set(kwargs: dict[str, Any]) -> Check:
    column = _only(kwargs, "column", "value_set")
    forbidden = _value_sets(kwargs["value_set"])

    def run(columns: Columns, parameters: Mapping[str, Any]) -> pa.BooleanArray:
        values = columns[column]
        return _where_present(values, pc.is_in(values, forbidden(values)))

    return run


def _between(kwargs: dict[str, Any]) -> Check:
    column = _only(kwargs, "column", "min_value", "max_value", "strict_min", "strict_max")
    below = pc.less_equal if kwargs.get("strict_min") else pc.less
    above = pc.greater_equal if kwargs.get("strict_max") else pc.greater

    def run(columns: Columns, parameters: Mapping[str, Any]) -> pa.BooleanArray:
        low = _parameter(kwargs.get("min_value"), parameters)
        high = _parameter(kwargs.get("max_value"), parameters)
        values = columns[column]
        outside = None
        for bound, beyond in ((low, below), (high, above)):
            if bound is not None:
                past = beyond(values, bound)
                outside = past if outside is None else pc.or_(outside, past)
        if outside is None:
            outside = pa.repeat(False, len(values))
        return _where_present(values, outside)

    return run


def _a_greater_than_b(kwargs: dict[str, Any]) -> Check:
    _only(kwargs, "column_A", "column_B", "or_equal", "ignore_row_if")
    a, b = kwargs["column_A"], kwargs["column_B"]
    holds = pc.greater_equal if kwargs.get("or_equal") else pc.greater
    ignore = kwargs.get("ignore_row_if", "both_values_are_missing")
    if ignore not in ("both_values_are_missing", "either_value_is_missing", "neither"):
        raise ConfigError(f"ignore_row_if `{ignore}` has no compiled form.")

    def run(columns: Columns, parameters: Mapping[str, Any]) -> pa.BooleanArray:
        left, right = columns[a], columns[b]
        # Rows with a missing value fail unless ignored; rows with both compare.
        fails = _filled(pc.invert(holds(left, right)), True)
        if ignore == "neither" or (_all_present(left) and _all_present(right)):
            return fails
        has_a, has_b = _present(left), _present(right)
        if ignore == "either_value_is_missing":
            return pc.and_(pc.and_(has_a, has_b), fails)
        if ignore == "both_values_are_missing":
            return pc.and_(pc.or_(has_a, has_b), fails)
        return fails

    return run


_BUILDERS: dict[str, Callable[[dict[str, Any]], Check]] = {
    "expect_column_values_to_not_be_null": _not_null,
    "expect_column_values_to_match_regex": _match_regex,
    "expect_column_values_to_be_in_set": _in_set,
    "expect_column_values_to_not_be_in_set": _not_in_set,
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


def _value_sets(values: Any) -> Callable[[pa.Array], pa.Array]:
    """`_value_set` of `values` for a column, made once per column type (`values` is read
    at the first call, where an error is raised as `_value_set` raises it)."""
    made: dict[pa.DataType, pa.Array] = {}

    def typed(column: pa.Array) -> pa.Array:
        kind = column.type
        if kind not in made:
            made[kind] = _value_set(list(values), column)
        return made[kind]

    return typed


def _value_set(values: list[Any], column: pa.Array) -> pa.Array:
    """The values of a set, typed as the column (Python equality: `1 == True`, `"1" != 1`)."""
    try:
        return pa.array(values, type=column.type)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        kept = [v for v in values if _fits(v, column.type)]
        return pa.array(kept, type=column.type)


def _fits(value: Any, kind: pa.DataType) -> bool:
    try:
        pa.array([value], type=kind)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return False
    return True


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
        combine = pc.and_ if kind == "and" else pc.or_

        def both(columns: Columns) -> pa.BooleanArray:
            size = len(next(iter(columns.values())))
            result = pa.repeat(kind == "and", size)
            for part in parts:
                result = combine(result, part(columns))
            return result

        return both
    column = str((condition.get("column") or {}).get("name"))
    if kind == "nullity":
        wanted = bool(condition.get("is_null"))

        def nullity(columns: Columns) -> pa.BooleanArray:
            nulls = pc.is_null(columns[column], nan_is_null=True)
            return nulls if wanted else pc.invert(nulls)

        return nullity
    if kind != "comparison":
        raise ConfigError(f"Row condition type `{kind}` has no compiled form.")
    operator, parameter = condition.get("operator"), condition.get("parameter")
    compare = _COMPARISONS.get(str(operator))
    if operator in ("IN", "NOT_IN"):
        compare = _membership(parameter, inside=operator == "IN")
    if compare is None:
        raise ConfigError(f"Row condition operator `{operator}` has no compiled form.")
    when_missing = operator in ("!=", "NOT_IN")  # a missing value is "not equal", "not in"

    def comparison(columns: Columns) -> pa.BooleanArray:
        values = columns[column]
        try:
            result = compare(values, parameter)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            # Values and parameter of kinds that do not compare: no row is "<" or "==".
            result = pa.repeat(when_missing, len(values))
        if _all_present(values):
            return _filled(result, False)
        return pc.if_else(_present(values), pc.fill_null(result, False), when_missing)

    return comparison


_COMPARISONS: dict[str, Callable[[pa.Array, Any], pa.Array]] = {
    "==": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}


def _membership(parameter: Any, *, inside: bool) -> Callable[[pa.Array, Any], pa.Array]:
    """The `IN` (`inside`) or `NOT_IN` comparison with the set `parameter`."""
    members = _value_sets(parameter)

    def compare(values: pa.Array, _: Any) -> pa.Array:
        found = pc.is_in(values, members(values))
        return found if inside else pc.invert(found)

    return compare


# ---- Python regular expressions as RE2 (Arrow's engine), where both mean the same ----------


@functools.cache
def _whitespace_class(negated: bool) -> str:
    """Python's `\\s` for str patterns, as an RE2 class, found by Python's `re` itself."""
    spaces = []
    for start in range(0, sys.maxunicode + 1, 1 << 16):  # by planes: small peak memory
        plane = "".join(map(chr, range(start, min(start + (1 << 16), sys.maxunicode + 1))))
        spaces += re.findall(r"\s", plane)
    ranges: list[tuple[int, int]] = []
    for c in map(ord, spaces):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))
    body = "".join(
        f"\\x{{{lo:x}}}" if lo == hi else f"\\x{{{lo:x}}}-\\x{{{hi:x}}}" for lo, hi in ranges
    )
    return f"[{'^' if negated else ''}{body}]"


_ESCAPES = {"Z": lambda: r"\z", "A": lambda: r"\A", "s": lambda: _whitespace_class(False)}
_ESCAPES["S"] = lambda: _whitespace_class(True)
_REPEAT = re.compile(r"\{\d+(,\d*)?\}")


def _unsupported_at(pattern: str, i: int) -> bool:
    if pattern.startswith("(?", i):
        return not pattern.startswith("(?:", i)
    return pattern[i] == "{" and not _REPEAT.match(pattern, i)


def to_re2(pattern: str) -> str | None:
    """`pattern` (Python `re`) as an RE2 pattern with the same `search` meaning, or None.

    Takes literals, escaped punctuation, `.`, `^`, groups, alternation, quantifiers and
    character classes without escapes; translates `\\s`, `\\S`, `\\A`, `\\Z` outside
    classes. Anything else returns None (the caller then runs Python's `re`).
    """
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 >= len(pattern) or in_class:
                return None
            n = pattern[i + 1]
            if n in _ESCAPES:
                out.append(_ESCAPES[n]())
            elif n.isascii() and not n.isalnum() and n != "_":
                out.append(c + n)
            else:
                return None  # \d, \w, \b, \n, \1…: Unicode or syntax differences
            i += 2
            continue
        if in_class:
            if c == "[":
                return None
            if c == "]":
                in_class = False
        elif c == "[":
            rest = pattern[i + 1 :]
            if rest.startswith(("]", "^]")):
                return None
            in_class = True
        elif c == "$":
            return None  # Python's `$` also matches before a final newline
        elif _unsupported_at(pattern, i):
            return None  # inline flags, look-arounds, named groups; a `{` that is no repeat
        elif c in "*+?}" and pattern[i + 1 : i + 2] == "+":
            return None  # possessive quantifiers
        out.append(c)
        i += 1
    if in_class:
        return None
    translated = "".join(out)
    try:
        pc.match_substring_regex(pa.array([""]), translated)
    except pa.ArrowException:
        return None
    return translated
