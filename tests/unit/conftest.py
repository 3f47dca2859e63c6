from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

# The contract suite is a plain module several test files import: rewrite its asserts before
# the first of them does, whatever order they are collected in.
pytest.register_assert_rewrite("tests.lineage_contract")

from lineage_guard.contract.validate import SuiteValidator  # noqa: E402

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
NOW_MS = NOW.timestamp() * 1000
SHA = "0" * 63 + "a"


def make_record(content_class: str = "SYNTHETIC", **provenance: Any) -> dict[str, Any]:
    """A contract-valid email activity of the given class; keyword args override provenance."""
    base: dict[str, Any] = {
        "content_class": content_class,
        "origin_env": "PRODUCTION",
        "source_system": "outreach-assistant",
        "generator": None,
        "generated_at": None,
        "disclosure": None,
        "parent_record_ids": [],
    }
    if content_class != "HUMAN":
        base["generator"] = {
            "name": "email-assistant",
            "model": "gpt-4o",
            "model_version": "2024-08-06",
            "parameters_sha256": SHA,
        }
        base["generated_at"] = datetime(2026, 11, 27, 11, 0, tzinfo=UTC)
    if content_class == "SYNTHETIC":
        base["disclosure"] = "AI-generated (EU AI Act Art. 50)"
    base.update(provenance)
    return {
        "record_id": "3f2b8a1e-9c4d-4e5f-8a7b-1c2d3e4f5a6b",
        "tenant_id": "acme",
        "provenance": base,
        "contact_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
        "direction": "OUTBOUND",
        "subject": "Renewal terms",
        "body": "Hello",
        "sent_at": datetime(2026, 11, 27, 11, 5, tzinfo=UTC),
    }


def with_id(record: dict[str, Any], record_id: str) -> dict[str, Any]:
    copied = copy.deepcopy(record)
    copied["record_id"] = record_id
    return copied


@pytest.fixture(scope="module", params=["compiled", "gx"])
def validator(request: pytest.FixtureRequest) -> SuiteValidator:
    """Both engines: every rule test runs on GX itself and on the compiled suite."""
    return SuiteValidator(engine=request.param, clock=lambda: NOW_MS)


def rules_of(validator: SuiteValidator, record: Any) -> set[str]:
    """The rules one record breaks, validated in a fresh batch of one (plus nothing else)."""
    [verdict] = validator.validate([record])
    return {v.rule for v in verdict.violations}
