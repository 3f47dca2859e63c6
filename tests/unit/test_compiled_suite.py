"""The compiled engine returns exactly Great Expectations' verdicts (property-based)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_guard.contract.compiled_suite import compile_expectation
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.lineage.errors import ConfigError

from .conftest import NOW, NOW_MS

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
        }
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


@pytest.fixture(scope="module")
def engines() -> tuple[SuiteValidator, SuiteValidator]:
    return (
        SuiteValidator(engine="gx", clock=lambda: NOW_MS),
        SuiteValidator(engine="compiled", clock=lambda: NOW_MS),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(records, min_size=1, max_size=60))
def test_compiled_engine_agrees_with_gx(
    engines: tuple[SuiteValidator, SuiteValidator], batch: list[dict[str, Any]]
) -> None:
    gx, compiled = engines
    expected = [(v.record_id, v.violations) for v in gx.validate(batch)]
    actual = [(v.record_id, v.violations) for v in compiled.validate(batch)]
    assert actual == expected


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
