"""Every contract rule, with a record that passes and one that fails, run through the GX suite."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from lineage_guard.contract.validate import SuiteValidator

from .conftest import NOW, NOW_MS, SHA, make_record, rules_of, with_id

UUID_A = "3f2b8a1e-9c4d-4e5f-8a7b-1c2d3e4f5a6b"
DST = "provenance.digital_source_type"
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
# The contract's reading of IPTC's vocabulary (README: the digital source type).
NEVER_HUMAN = [
    "trainedAlgorithmicMedia",
    "compositeWithTrainedAlgorithmicMedia",
    "compositeSynthetic",
    "algorithmicMedia",
]
NEVER_SYNTHETIC = [
    "digitalCapture",
    "computationalCapture",
    "negativeFilm",
    "positiveFilm",
    "print",
    "minorHumanEdits",
    "humanEdits",
    "algorithmicallyEnhanced",
    "digitalArt",
    "digitalCreation",
    "compositeCapture",
]
EITHER = ["dataDrivenMedia", "softwareImage", "screenCapture", "virtualRecording", "composite"]
ALL_TYPES = NEVER_HUMAN + NEVER_SYNTHETIC + EITHER
UUID_B = "11111111-2222-4333-8444-555555555555"


@pytest.mark.parametrize("content_class", ["HUMAN", "AI_ASSISTED", "SYNTHETIC"])
def test_valid_records_of_every_class_pass(validator: SuiteValidator, content_class: str) -> None:
    assert rules_of(validator, make_record(content_class)) == set()


def test_human_record_needs_no_generator_time_or_disclosure(validator: SuiteValidator) -> None:
    record = make_record("HUMAN", generator=None, generated_at=None, disclosure=None)
    assert rules_of(validator, record) == set()


def _set(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    record = copy.deepcopy(record)
    *parents, last = path.split(".")
    target = record
    for part in parents:
        target = target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return record


_DELETE = object()

# (description, content class, field path, bad value, the exact rules it must break)
FAILURES = [
    ("record_id null", "HUMAN", "record_id", None, {"record_id_missing"}),
    ("record_id absent", "HUMAN", "record_id", _DELETE, {"record_id_missing"}),
    ("record_id not a UUID", "HUMAN", "record_id", "contact-42", {"record_id_not_uuid"}),
    ("record_id UUID too short", "HUMAN", "record_id", UUID_A[:-1], {"record_id_not_uuid"}),
    ("record_id UUID plus newline", "HUMAN", "record_id", UUID_A + "\n", {"record_id_not_uuid"}),
    (
        "record_id UUID with braces",
        "HUMAN",
        "record_id",
        "{" + UUID_A + "}",
        {"record_id_not_uuid"},
    ),
    ("record_id a number", "HUMAN", "record_id", 42, {"wrong_type"}),
    ("tenant_id null", "HUMAN", "tenant_id", None, {"tenant_id_missing"}),
    ("tenant_id empty", "HUMAN", "tenant_id", "", {"tenant_id_blank"}),
    ("tenant_id spaces", "HUMAN", "tenant_id", "   ", {"tenant_id_blank"}),
    ("tenant_id tab/newline", "HUMAN", "tenant_id", "\t\n", {"tenant_id_blank"}),
    ("tenant_id unicode spaces", "HUMAN", "tenant_id", "\u00a0\u2003\u3000", {"tenant_id_blank"}),
    ("provenance stripped", "SYNTHETIC", "provenance", None, {"provenance_missing"}),
    ("provenance absent", "HUMAN", "provenance", _DELETE, {"provenance_missing"}),
    ("provenance a string", "HUMAN", "provenance", "HUMAN", {"wrong_type"}),
    ("content_class null", "HUMAN", "provenance.content_class", None, {"content_class_missing"}),
    (
        "content_class unknown",
        "HUMAN",
        "provenance.content_class",
        "ROBOT",
        {"content_class_unknown"},
    ),
    (
        "content_class lower case",
        "HUMAN",
        "provenance.content_class",
        "human",
        {"content_class_unknown"},
    ),
    ("origin_env null", "HUMAN", "provenance.origin_env", None, {"origin_env_missing"}),
    ("origin_env unknown", "HUMAN", "provenance.origin_env", "DEV", {"origin_env_unknown"}),
    ("source_system null", "HUMAN", "provenance.source_system", None, {"source_system_missing"}),
    ("source_system empty", "HUMAN", "provenance.source_system", "", {"source_system_blank"}),
    (
        "source_system whitespace",
        "AI_ASSISTED",
        "provenance.source_system",
        " \t ",
        {"source_system_blank"},
    ),
    (
        "generator missing (AI_ASSISTED)",
        "AI_ASSISTED",
        "provenance.generator",
        None,
        {"generator_required"},
    ),
    (
        "generator missing (SYNTHETIC)",
        "SYNTHETIC",
        "provenance.generator",
        None,
        {"generator_required"},
    ),
    (
        "generator name empty",
        "SYNTHETIC",
        "provenance.generator.name",
        "",
        {"generator_name_blank"},
    ),
    (
        "generator name whitespace",
        "AI_ASSISTED",
        "provenance.generator.name",
        "  ",
        {"generator_name_blank"},
    ),
    (
        "parameters_sha256 upper case",
        "SYNTHETIC",
        "provenance.generator.parameters_sha256",
        SHA.upper(),
        {"parameters_sha256_invalid"},
    ),
    (
        "parameters_sha256 63 digits",
        "SYNTHETIC",
        "provenance.generator.parameters_sha256",
        SHA[:-1],
        {"parameters_sha256_invalid"},
    ),
    (
        "parameters_sha256 65 digits",
        "SYNTHETIC",
        "provenance.generator.parameters_sha256",
        SHA + "0",
        {"parameters_sha256_invalid"},
    ),
    (
        "parameters_sha256 not hex",
        "SYNTHETIC",
        "provenance.generator.parameters_sha256",
        "g" * 64,
        {"parameters_sha256_invalid"},
    ),
    (
        "parameters_sha256 empty",
        "AI_ASSISTED",
        "provenance.generator.parameters_sha256",
        "",
        {"parameters_sha256_invalid"},
    ),
    (
        "generated_at missing (AI_ASSISTED)",
        "AI_ASSISTED",
        "provenance.generated_at",
        None,
        {"generated_at_required"},
    ),
    (
        "generated_at missing (SYNTHETIC)",
        "SYNTHETIC",
        "provenance.generated_at",
        None,
        {"generated_at_required"},
    ),
    (
        "generated_at 5 min + 1 ms ahead",
        "SYNTHETIC",
        "provenance.generated_at",
        NOW + timedelta(minutes=5, milliseconds=1),
        {"generated_at_in_future"},
    ),
    (
        "generated_at next year",
        "AI_ASSISTED",
        "provenance.generated_at",
        NOW + timedelta(days=365),
        {"generated_at_in_future"},
    ),
    (
        "HUMAN generated_at in future",
        "HUMAN",
        "provenance.generated_at",
        NOW + timedelta(hours=1),
        {"generated_at_in_future"},
    ),
    (
        "generated_at garbage text",
        "SYNTHETIC",
        "provenance.generated_at",
        "yesterday",
        {"wrong_type"},
    ),
    ("disclosure missing", "SYNTHETIC", "provenance.disclosure", None, {"disclosure_required"}),
    ("disclosure empty", "SYNTHETIC", "provenance.disclosure", "", {"disclosure_blank"}),
    (
        "disclosure whitespace",
        "SYNTHETIC",
        "provenance.disclosure",
        "\u2028 ",
        {"disclosure_blank"},
    ),
    (
        "parent_record_ids not a list",
        "HUMAN",
        "provenance.parent_record_ids",
        "abc",
        {"wrong_type"},
    ),
    *(
        (
            f"digital_source_type {value!r}",
            "AI_ASSISTED",
            DST,
            value,
            {"digital_source_type_unknown"},
        )
        for value in (
            "https://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia",
            IPTC + "TrainedAlgorithmicMedia",
            IPTC + "trainedAlgorithmicMedia/",
            "trainedAlgorithmicMedia",
            "digsrctype:trainedAlgorithmicMedia",
            IPTC,
            "",
        )
    ),
    ("digital_source_type a number", "HUMAN", DST, 7, {"wrong_type"}),
    *(
        (f"HUMAN {code}", "HUMAN", DST, IPTC + code, {"digital_source_type_generated_but_human"})
        for code in NEVER_HUMAN
    ),
    *(
        (
            f"SYNTHETIC {code}",
            "SYNTHETIC",
            DST,
            IPTC + code,
            {"digital_source_type_captured_but_synthetic"},
        )
        for code in NEVER_SYNTHETIC
    ),
    # An unknown URI is reported once, as unknown, whatever the class.
    ("HUMAN bogus type", "HUMAN", DST, IPTC + "aiGenerated", {"digital_source_type_unknown"}),
]


@pytest.mark.parametrize(
    ("content_class", "path", "value", "expected"),
    [case[1:] for case in FAILURES],
    ids=[case[0] for case in FAILURES],
)
def test_each_rule_rejects_exactly(
    validator: SuiteValidator, content_class: str, path: str, value: Any, expected: set[str]
) -> None:
    assert rules_of(validator, _set(make_record(content_class), path, value)) == expected


# Values that look like failures but are allowed by the contract.
PASSES = [
    ("HUMAN without generator", "HUMAN", "provenance.generator", None),
    ("HUMAN with blank disclosure", "HUMAN", "provenance.disclosure", " "),
    ("AI_ASSISTED without disclosure", "AI_ASSISTED", "provenance.disclosure", None),
    ("parameters_sha256 null", "SYNTHETIC", "provenance.generator.parameters_sha256", None),
    (
        "generated_at exactly now + 5 min",
        "SYNTHETIC",
        "provenance.generated_at",
        NOW + timedelta(minutes=5),
    ),
    ("generated_at as epoch millis", "SYNTHETIC", "provenance.generated_at", int(NOW_MS) - 1),
    (
        "generated_at as ISO text",
        "SYNTHETIC",
        "provenance.generated_at",
        "2026-11-27T11:59:00+00:00",
    ),
    (
        "generated_at as ISO text with Z",
        "AI_ASSISTED",
        "provenance.generated_at",
        "2026-11-27T11:59:00Z",
    ),
    ("upper-case UUID", "HUMAN", "record_id", UUID_A.upper()),
    ("tenant with inner spaces", "HUMAN", "tenant_id", " acme eu "),
    ("parent_record_ids absent", "HUMAN", "provenance.parent_record_ids", _DELETE),
    # Null, or absent (written before the field existed: `make_record` leaves it out, so
    # `test_valid_records_of_every_class_pass` is that case): no type is inferred.
    *((f"{c} digital_source_type null", c, DST, None) for c in ("HUMAN", "SYNTHETIC")),
    # AI_ASSISTED agrees with every type; the rest agree with the classes they do not exclude.
    *((f"AI_ASSISTED {code}", "AI_ASSISTED", DST, IPTC + code) for code in ALL_TYPES),
    *((f"HUMAN {code}", "HUMAN", DST, IPTC + code) for code in NEVER_SYNTHETIC + EITHER),
    *((f"SYNTHETIC {code}", "SYNTHETIC", DST, IPTC + code) for code in NEVER_HUMAN + EITHER),
]


@pytest.mark.parametrize(
    ("content_class", "path", "value"),
    [case[1:] for case in PASSES],
    ids=[case[0] for case in PASSES],
)
def test_allowed_values_pass(
    validator: SuiteValidator, content_class: str, path: str, value: Any
) -> None:
    assert rules_of(validator, _set(make_record(content_class), path, value)) == set()


@pytest.mark.parametrize("engine", ["compiled", "gx"])
def test_derived_record_may_not_have_a_lower_class_than_its_parent(engine: str) -> None:
    validator = SuiteValidator(engine=engine, clock=lambda: NOW_MS)
    parent = with_id(make_record("SYNTHETIC"), UUID_A)
    ok_child = with_id(make_record("SYNTHETIC", parent_record_ids=[UUID_A]), UUID_B)
    low_child = with_id(
        make_record("AI_ASSISTED", parent_record_ids=[UUID_A]),
        "22222222-2222-4333-8444-555555555555",
    )
    human_child = with_id(
        make_record("HUMAN", parent_record_ids=[UUID_A, UUID_B]),
        "33333333-2222-4333-8444-555555555555",
    )
    verdicts = validator.validate([parent, ok_child, low_child])
    assert [{v.rule for v in verdict.violations} for verdict in verdicts] == [
        set(),
        set(),
        {"class_below_parent"},
    ]
    # The parent is remembered across micro-batches.
    [later] = validator.validate([human_child])
    assert {v.rule for v in later.violations} == {"class_below_parent"}


def test_unknown_parent_is_not_checked(validator: SuiteValidator) -> None:
    record = make_record("HUMAN", parent_record_ids=["99999999-2222-4333-8444-555555555555"])
    assert rules_of(validator, record) == set()


def test_messages_name_the_record_and_the_field(validator: SuiteValidator) -> None:
    record = _set(make_record("SYNTHETIC"), "provenance.disclosure", "  ")
    [verdict] = validator.validate([record])
    [violation] = verdict.violations
    assert violation.column == "provenance.disclosure"
    assert UUID_A in violation.message
    assert "`provenance.disclosure`" in violation.message


def test_a_batch_reports_exactly_the_bad_records(validator: SuiteValidator) -> None:
    good = [
        with_id(make_record(c), f"00000000-0000-4000-8000-{i:012d}")
        for i, c in enumerate(["HUMAN", "AI_ASSISTED", "SYNTHETIC"] * 100)
    ]
    bad_at = {
        7: ("provenance.generator", None),
        150: ("tenant_id", ""),
        299: ("provenance.disclosure", None),
    }
    batch = [_set(r, *bad_at[i]) if i in bad_at else r for i, r in enumerate(good)]
    # Record 7 is AI_ASSISTED (7 % 3 == 1), 299 is SYNTHETIC (299 % 3 == 2).
    verdicts = validator.validate(batch)
    rejected = {
        i: {v.rule for v in verdict.violations}
        for i, verdict in enumerate(verdicts)
        if not verdict.passed
    }
    assert rejected == {
        7: {"generator_required"},
        150: {"tenant_id_blank"},
        299: {"disclosure_required"},
    }


def test_the_iptc_vocabulary_is_partitioned_as_documented() -> None:
    """Every URI of the contract's IPTC list is excluded for HUMAN, for SYNTHETIC, or for
    neither (never both); the 20 concepts of IPTC's list as released 2024-10-23."""
    from tests.unit.test_compiled_suite import _iptc_uris

    assert sorted(_iptc_uris()) == sorted(IPTC + code for code in ALL_TYPES)
    assert len(set(ALL_TYPES)) == 20


def test_a_contradicting_digital_source_type_names_its_code(validator: SuiteValidator) -> None:
    record = _set(make_record("HUMAN"), DST, IPTC + "trainedAlgorithmicMedia")
    [verdict] = validator.validate([record])
    assert [(v.rule, v.column, v.message) for v in verdict.violations] == [
        (
            "digital_source_type_generated_but_human",
            DST,
            f"Record `{UUID_A}`: is HUMAN but its IPTC digital source type says generative AI "
            f"or algorithmic media (`{DST}` is 'digsrctype:trainedAlgorithmicMedia').",
        )
    ]
