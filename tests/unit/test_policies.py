"""Sink policies: production leaks, tenant crossing, training exports."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lineage_guard.contract.policies import TrainingPolicy, judge, parse_policy
from lineage_guard.lineage.errors import ConfigError

from .conftest import make_record


def record(
    content_class: str = "HUMAN", origin: str = "PRODUCTION", tenant: str = "acme"
) -> dict[str, Any]:
    made = copy.deepcopy(make_record(content_class))
    made["provenance"]["origin_env"] = origin
    made["tenant_id"] = tenant
    return made


def rules(policies: list[Any], made: dict[str, Any]) -> list[str]:
    return [v.rule for v in judge(policies, made)]


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("PRODUCTION", []),
        ("TEST", ["leak_test_origin"]),
        ("STAGING", ["leak_staging_origin"]),
    ],
)
def test_production_blocks_everything_but_production_origin(
    origin: str, expected: list[str]
) -> None:
    assert rules([parse_policy("production")], record(origin=origin)) == expected


def test_tenant_blocks_other_tenants_and_combines_with_production() -> None:
    policies = [parse_policy("production"), parse_policy("tenant:acme")]
    assert rules(policies, record(tenant="acme")) == []
    assert rules(policies, record(tenant="globex")) == ["tenant_mismatch"]
    assert rules(policies, record(tenant="globex", origin="TEST")) == [
        "leak_test_origin",
        "tenant_mismatch",
    ]


def test_training_takes_the_kind_of_its_first_record() -> None:
    policy = parse_policy("training")
    assert rules([policy], record("SYNTHETIC")) == []
    assert rules([policy], record("AI_ASSISTED")) == []
    assert rules([policy], record("HUMAN")) == ["training_mix"]
    assert isinstance(policy, TrainingPolicy) and policy.counts == {"real": 0, "synthetic": 2}


@pytest.mark.parametrize(("kind", "blocked"), [("real", "SYNTHETIC"), ("synthetic", "HUMAN")])
def test_declared_training_kind(kind: str, blocked: str) -> None:
    policy = parse_policy(f"training:{kind}")
    assert rules([policy], record(blocked)) == ["training_mix"]


def test_declared_mix_blocks_nothing_and_counts_the_ratio() -> None:
    policy = parse_policy("training:mixed")
    for content_class in ("HUMAN", "SYNTHETIC", "AI_ASSISTED", "HUMAN"):
        assert rules([policy], record(content_class)) == []
    assert isinstance(policy, TrainingPolicy)
    assert policy.synthetic_ratio == 0.5


def test_a_record_another_policy_blocks_does_not_fix_the_training_kind() -> None:
    policies = [parse_policy("production"), parse_policy("training")]
    assert rules(policies, record("SYNTHETIC", origin="TEST")) == ["leak_test_origin"]
    assert rules(policies, record("HUMAN")) == []  # the first record that passes sets the kind
    assert rules(policies, record("SYNTHETIC")) == ["training_mix"]


@pytest.mark.parametrize("text", ["prod", "tenant:", "tenant", "training:some", ""])
def test_unknown_policies_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="Unknown sink policy"):
        parse_policy(text)
