"""The compiled engine returns exactly Great Expectations' verdicts (property-based)."""

from __future__ import annotations

import copy
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_guard.contract import compiled_suite
from lineage_guard.contract.columns import ArrowFlattener, _Refused
from lineage_guard.contract.compiled_suite import compile_expectation, to_re2
from lineage_guard.contract.records import COLUMNS, Flattener, ParentRanks
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.lineage.errors import ConfigError

from .conftest import NOW, NOW_MS

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def _iptc_uris() -> list[str]:
    """The digital source types the contract names (`digital_source_type_unknown`)."""
    from lineage_guard.contract.validate import load_suite_documents

    for document in load_suite_documents():
        for expectation in document["expectations"]:
            if expectation["meta"]["rule"] == "digital_source_type_unknown":
                return list(expectation["kwargs"]["value_set"])
    raise AssertionError("the contract has no digital_source_type_unknown rule")


# Every IPTC URI the contract knows, and bogus near misses: https, another case, a trailing
# slash or space, the bare code, another vocabulary's path, blanks, random text.
source_types = st.one_of(
    st.none(),
    st.sampled_from(_iptc_uris()),
    st.sampled_from(_iptc_uris())
    .map(
        lambda uri: st.sampled_from(
            [
                uri.replace("http://", "https://"),
                uri.upper(),
                uri + "/",
                uri + " ",
                uri.removeprefix(IPTC),
                uri.replace("digitalsourcetype", "mediatopic"),
            ]
        )
    )
    .flatmap(lambda s: s),
    st.sampled_from(["", " ", IPTC, IPTC + "aiGenerated", "trainedAlgorithmicMedia"]),
    st.text(max_size=8),
)

IDS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(8)]
BLANKS = ["", " ", "\t", "\n", "\u00a0", "\u2003", "\u3000", "\u2028", " \u200b "]
texts = st.one_of(
    st.none(),
    st.sampled_from(BLANKS),
    st.text(max_size=8),
    st.sampled_from(["acme", "crm-sync", " x ", "x\n"]),
)
moments = st.one_of(
    st.none(),
    st.sampled_from(
        [
            NOW + timedelta(minutes=5),
            NOW + timedelta(minutes=5, milliseconds=1),
            NOW + timedelta(minutes=5, milliseconds=-1),
            NOW - timedelta(days=400),
            NOW + timedelta(days=1),
        ]
    ),
    st.integers(min_value=0, max_value=int(NOW_MS) + 10 * 60_000),
    st.sampled_from(["2026-11-27T12:05:00Z", "2026-11-27T12:05:00.001+00:00", "garbage", ""]),
)
hashes = st.one_of(
    st.none(),
    st.sampled_from(["a" * 64, "A" * 64, "a" * 63, "a" * 65, "", "g" * 64, "a" * 64 + "\n"]),
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
classes = st.one_of(
    st.none(),
    st.sampled_from(["HUMAN", "AI_ASSISTED", "SYNTHETIC", "human", "ROBOT", ""]),
    st.integers(),
)
origins = st.one_of(st.none(), st.sampled_from(["PRODUCTION", "STAGING", "TEST", "DEV"]))
generators = st.one_of(
    st.none(),
    st.builds(
        lambda name, digest: {
            "name": name,
            "model": None,
            "model_version": None,
            "parameters_sha256": digest,
        },
        texts,
        hashes,
    ),
)
provenances = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "content_class": classes,
            "origin_env": origins,
            "source_system": texts,
            "generator": generators,
            "generated_at": moments,
            "disclosure": texts,
            "parent_record_ids": st.lists(st.sampled_from(IDS), max_size=2),
        },
        # absent: a record written before the field existed
        optional={"digital_source_type": st.one_of(source_types, st.integers())},
    ),
)
records = st.fixed_dictionaries(
    {
        "record_id": st.one_of(
            st.sampled_from(IDS), st.none(), st.sampled_from(["x", IDS[0] + "\n"]), st.integers()
        ),
        "tenant_id": st.one_of(texts, st.integers()),
        "provenance": provenances,
    }
)

# Well-typed records, as Avro decoding gives them (the Arrow fast path takes these batches),
# with the edges of every column: blanks of every kind of Unicode whitespace, empty strings,
# the first and last representable moments, other time zones, 64-bit epoch millis.
clean_texts = st.one_of(
    st.none(), st.sampled_from(BLANKS), st.text(max_size=8), st.sampled_from(["acme", " x "])
)
clean_moments = st.one_of(
    st.none(),
    st.sampled_from(
        [
            NOW + timedelta(minutes=5),
            NOW + timedelta(minutes=5, milliseconds=1),
            datetime(1, 1, 1, tzinfo=UTC),
            datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
            datetime(2026, 11, 27, 14, 5, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 11, 27, 12, 5, 0, 1000),  # naive: read as UTC
        ]
    ),
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
)
clean_millis = st.one_of(
    st.none(),
    st.integers(min_value=-62_135_596_800_000, max_value=2**63 - 1),  # from year 1 on
    st.sampled_from([int(NOW_MS) + 300_000, int(NOW_MS) + 300_001, 0, -1, 2**53 + 1]),
)
clean_generators = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"name": clean_texts, "parameters_sha256": st.one_of(st.none(), hashes)},
        optional={"model": st.none()},
    ),
)


def clean_provenances(moments: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {
                "content_class": st.one_of(
                    st.none(), st.sampled_from(["HUMAN", "AI_ASSISTED", "SYNTHETIC", "robot", ""])
                ),
                "origin_env": origins,
                "source_system": clean_texts,
                "generator": clean_generators,
                "generated_at": moments,
                "disclosure": clean_texts,
                "parent_record_ids": st.one_of(
                    st.none(), st.lists(st.sampled_from(IDS), max_size=3)
                ),
            },
            optional={"digital_source_type": source_types},  # absent: written before it
        ),
    )


def clean_records(moments: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "record_id": st.one_of(st.sampled_from(IDS), st.none(), st.sampled_from(["x", ""])),
            "tenant_id": clean_texts,
            "provenance": clean_provenances(moments),
        },
        optional={"subject": st.text(max_size=4)},
    )


clean_batches = st.one_of(
    st.lists(clean_records(clean_moments), min_size=1, max_size=80),
    st.lists(clean_records(clean_millis), min_size=1, max_size=80),
)
# Values of the wrong type, one kind per batch, dropped into otherwise clean records.
WRONG = [
    b"acme",
    True,
    1.5,
    math.nan,
    math.inf,
    -(2**70),
    ("x",),
    ["x"],
    {"k": "v"},
    "\ud800",
    "2026-11-27T12:05:00Z",
    NOW + timedelta(microseconds=1),
]
WRONG_PATHS = [
    ("record_id",),
    ("tenant_id",),
    ("provenance",),
    ("provenance", "content_class"),
    ("provenance", "source_system"),
    ("provenance", "generator"),
    ("provenance", "generated_at"),
    ("provenance", "parent_record_ids"),
    ("provenance", "digital_source_type"),
]


@st.composite
def dirty_batches(draw: st.DrawFn) -> list[Any]:
    batch: list[Any] = draw(st.lists(clean_records(clean_moments), min_size=1, max_size=40))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        i = draw(st.integers(min_value=0, max_value=len(batch) - 1))
        # A copy: the shared `{"k": "v"}` must not become a provenance that later paths fill
        # (with itself, at worst: a record that refers to itself, which no input can be).
        path, value = (
            draw(st.sampled_from(WRONG_PATHS)),
            copy.deepcopy(draw(st.sampled_from(WRONG))),
        )
        if draw(st.booleans()) and path == ("record_id",):
            batch[i] = draw(st.sampled_from([None, "record", ["record"], 7]))  # not an object
            continue
        target = batch[i]
        if not isinstance(target, dict):
            continue
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                break
            target = target[key]
        else:
            target[path[-1]] = value
    return batch


@pytest.fixture(scope="module")
def engines() -> tuple[SuiteValidator, SuiteValidator]:
    return (
        SuiteValidator(engine="gx", clock=lambda: NOW_MS),
        SuiteValidator(engine="compiled", clock=lambda: NOW_MS),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.one_of(st.lists(records, min_size=1, max_size=60), clean_batches, dirty_batches()))
def test_compiled_engine_agrees_with_gx(
    engines: tuple[SuiteValidator, SuiteValidator], batch: list[dict[str, Any]]
) -> None:
    gx, compiled = engines
    expected = [(v.record_id, v.violations) for v in gx.validate(batch)]
    actual = [(v.record_id, v.violations) for v in compiled.validate(batch)]
    assert actual == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.one_of(st.lists(records, min_size=1, max_size=60), clean_batches, dirty_batches()))
def test_compiled_engine_agrees_with_gx_with_regexes_in_re2(
    engines: tuple[SuiteValidator, SuiteValidator], batch: list[dict[str, Any]]
) -> None:
    """The same with every batch's regexes run by Arrow (RE2), as a batch past `FEW_ROWS`
    rows runs them: the batches drawn here are mostly shorter."""
    gx, compiled = engines
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(compiled_suite, "FEW_ROWS", 0)
        actual = [(v.record_id, v.violations) for v in compiled.validate(batch)]
    assert actual == [(v.record_id, v.violations) for v in gx.validate(batch)]


def _same(a: list[Any], b: list[Any]) -> bool:
    nan = [isinstance(x, float) and math.isnan(x) for x in a]
    return nan == [isinstance(x, float) and math.isnan(x) for x in b] and [
        None if n else x for x, n in zip(a, nan, strict=True)
    ] == [None if n else x for x, n in zip(b, nan, strict=True)]


@settings(max_examples=1500, deadline=None)
@given(
    batches=st.lists(st.one_of(clean_batches, dirty_batches()), min_size=1, max_size=4),
    known=st.one_of(
        st.none(), st.dictionaries(st.sampled_from(IDS), st.integers(min_value=0, max_value=2))
    ),
)
def test_arrow_columns_equal_the_reference_columns(
    batches: list[list[Any]], known: dict[str, int] | None
) -> None:
    """Column by column, value by value (and the parents' ranks after each batch), the Arrow
    flattener gives what the reference flattener gives, across consecutive batches, with the
    parents' ranks remembered or given by the caller (`known`)."""
    arrow, reference = ArrowFlattener(ParentRanks()), Flattener(ParentRanks())
    for batch in batches:
        columns, errors = arrow.flatten(batch, known)
        expected, expected_errors = reference.flatten(batch, known)
        for name in COLUMNS:
            assert _same(columns[name].to_pylist(), expected[name]), name
        assert errors == expected_errors
        assert arrow.parents._ranks == reference.parents._ranks


@settings(max_examples=300, deadline=None)
@given(batch=clean_batches)
def test_well_typed_batches_take_the_arrow_path(batch: list[Any]) -> None:
    ArrowFlattener()._fast(batch)  # raises `_Refused` if it would fall back


@pytest.mark.parametrize(
    ("batch", "wrong"),
    [
        ([{"record_id": b"x"}], "record_id"),
        ([{"provenance": {"generated_at": True}}], "provenance.generated_at"),
        ([{"provenance": {"generated_at": 1.5}}], None),  # epoch millis as a float: allowed
        ([{"provenance": {"parent_record_ids": ("a",)}}], "provenance.parent_record_ids"),
        ([{"provenance": {"parent_record_ids": "ab"}}], "provenance.parent_record_ids"),
        ([{"provenance": [("content_class", "HUMAN")]}], "provenance"),
        ([None], "(record)"),
        ([{"tenant_id": "\ud800"}], "tenant_id"),
        ([{"provenance": {"generated_at": NOW + timedelta(microseconds=1500)}}], None),
    ],
)
def test_values_arrow_would_coerce_fall_back_to_the_reference(
    batch: list[Any], wrong: str | None
) -> None:
    """Arrow converts bytes to strings, tuples and strings to lists, None to a null struct:
    those batches go through the reference flattener, which reports them (or, for values the
    contract allows, converts them as it always did)."""
    with pytest.raises(_Refused):
        ArrowFlattener()._fast(batch)
    columns, errors = ArrowFlattener().flatten(batch)
    assert [v.column for v in errors.get(0, [])] == ([wrong] if wrong else [])
    if wrong is None:
        expected, _ = Flattener().flatten(batch)
        assert columns["generated_at"].to_pylist() == expected["generated_at"]


PATTERNS = [
    r"\S",
    r"\s+",
    r"^[0-9a-f]{64}\Z",
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}\Z",
    r"^a.c\Z",
    r"(?:ab|cd)+x?",
    r"\Aab*\.",
]


@settings(max_examples=500, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.text(max_size=6),
            st.text(alphabet="ab.cdx \n\t\u00a0\u2003\u3000\u1680\u0085\u000b", max_size=6),
            st.text(alphabet="0123456789abcdefABCDEF-", min_size=60, max_size=66),
        ),
        max_size=20,
    )
)
def test_translated_regexes_search_like_python(values: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    for pattern in PATTERNS:
        translated = to_re2(pattern)
        assert translated is not None, pattern
        found = pc.match_substring_regex(pa.array(values, pa.string()), translated).to_pylist()
        assert found == [re.search(pattern, v) is not None for v in values], pattern


@pytest.mark.parametrize(
    "pattern", [r"\d", r"\w+", r"a$", r"(?i)a", r"(?=a)", r"[\s]", r"a{1001}", r"(a)\1", r"a++"]
)
def test_regexes_that_differ_in_re2_run_in_python(pattern: str) -> None:
    assert to_re2(pattern) is None
    [check] = [compile_expectation(_regex_on("tenant_id", pattern))]
    import pyarrow as pa

    values = ["a", "1", "\u0661", "é", "", None, "a\n", "aa"]
    columns = {"tenant_id": pa.array(values, pa.string())}
    failing = check(columns, {}).to_pylist()
    assert failing == [v is not None and re.search(pattern, v) is None for v in values]


def _regex_on(column: str, pattern: str) -> dict[str, Any]:
    return {
        "type": "expect_column_values_to_match_regex",
        "kwargs": {"column": column, "regex": pattern},
    }


def test_boundary_timestamps_agree(engines: tuple[SuiteValidator, SuiteValidator]) -> None:
    base = {"record_id": IDS[1], "tenant_id": "acme"}
    batch = [
        {
            **base,
            "provenance": {
                "content_class": "HUMAN",
                "origin_env": "TEST",
                "source_system": "s",
                "generated_at": moment,
            },
        }
        for moment in (
            NOW + timedelta(minutes=5),
            NOW + timedelta(minutes=5, milliseconds=1),
            datetime(1970, 1, 1, tzinfo=UTC),
            int(NOW_MS) + 300_000,
            int(NOW_MS) + 300_001,
        )
    ]
    gx, compiled = engines
    rules = [{v.rule for v in verdict.violations} for verdict in compiled.validate(batch)]
    assert rules == [set(), {"generated_at_in_future"}, set(), set(), {"generated_at_in_future"}]
    assert compiled.validate(batch) == gx.validate(batch)


@pytest.mark.parametrize(
    "expectation",
    [
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "x"}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x", "mostly": 0.9}},
        {
            "type": "expect_column_values_to_not_be_null",
            "kwargs": {"column": "x", "row_condition": "x > 1", "condition_parser": "pandas"},
        },
    ],
)
def test_unsupported_expectations_are_refused(expectation: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"engine gx|compiled form"):
        compile_expectation(expectation)


def test_one_valid_record_costs_few_kernel_calls() -> None:
    """A pass pays one `pyarrow.compute` call per mask whatever the batch's length, and the
    gateway's passes are mostly of one record: the masks of columns without nulls are not
    computed, a check whose row condition holds for no row is not run, value sets are typed
    once, and a few rows' regexes run in Python (`FEW_ROWS`: Arrow compiles a pattern per
    call). One valid HUMAN record costs 63 calls into `pyarrow.compute` (was 181, then 80)."""
    import sys

    from lineage_guard.generate import generate

    validator = SuiteValidator()
    record = next(
        g.record for g in generate(40, seed=3) if g.record["provenance"]["content_class"] == "HUMAN"
    )
    columns, type_errors = validator.flatten([record], {})
    validator.failures_of_columns(columns, type_errors)  # value sets typed at the first pass
    calls = 0

    def count(frame: Any, event: str, _: Any) -> None:
        nonlocal calls
        if event == "call" and frame.f_code.co_filename.endswith("pyarrow/compute.py"):
            calls += 1

    sys.setprofile(count)
    try:
        found = validator.failures_of_columns(columns, type_errors)
    finally:
        sys.setprofile(None)
    assert found == {}
    assert calls <= 70
