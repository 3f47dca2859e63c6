"""The control mapping (`evidence/controls.json`) names only rules, sink policies and queries
that exist, and every control says what the guard does not cover."""

from __future__ import annotations

import importlib
import re

from lineage_guard.contract.policies import judge, parse_policy
from lineage_guard.contract.validate import suite_rules
from lineage_guard.evidence.controls import load_mapping


def _record(**provenance: str) -> dict[str, object]:
    values = {"content_class": "HUMAN", "origin_env": "PRODUCTION"} | provenance
    return {"record_id": "r", "tenant_id": "acme", "provenance": values}


def policy_rules() -> dict[str, set[str]]:
    """The rules each sink policy reports, found by letting it judge records."""
    production = parse_policy("production")
    tenant = parse_policy("tenant:acme")
    found = {
        "production": {
            v.rule
            for env in ("TEST", "STAGING")
            for v in judge([production], _record(origin_env=env))
        },
        "tenant": {v.rule for v in judge([tenant], {**_record(), "tenant_id": "globex"})},
    }
    training = parse_policy("training")
    judge([training], _record())
    found["training"] = {v.rule for v in judge([training], _record(content_class="SYNTHETIC"))}
    return found


def test_every_rule_policy_and_query_named_exists() -> None:
    mapping = load_mapping()
    policies = policy_rules()
    assert policies == {
        "production": {"leak_test_origin", "leak_staging_origin"},
        "tenant": {"tenant_mismatch"},
        "training": {"training_mix"},
    }
    known_rules = {rule for rule, _ in suite_rules()} | set().union(*policies.values())
    for control in mapping.controls:
        assert set(control.rules) <= known_rules, (control.id, set(control.rules) - known_rules)
        assert set(control.policies) <= policies.keys(), control.id
        for query in control.queries:
            module, _, name = f"lineage_guard.{query}".rpartition(".")
            assert callable(getattr(importlib.import_module(module), name, None)), query
        assert set(control.observations) <= mapping.observation_kinds.keys(), control.id
        assert control.not_covered.strip() and control.covers.strip(), control.id


def test_the_mapping_is_versioned_and_covers_the_issue_s_controls() -> None:
    mapping = load_mapping()
    assert re.fullmatch(r"\d+\.\d+\.\d+", mapping.version)
    assert mapping.basis == "metadata"
    references = {(c.framework, c.reference) for c in mapping.controls}
    assert {
        ("AI Act", "Article 50(2)"),
        ("AI Act", "Article 50(4)"),
        ("Code of Practice", "Measure 1.1"),
        ("Code of Practice", "Measure 1.2"),
        ("Code of Practice", "Commitment 2"),
        ("GDPR", "Article 30"),
        ("GDPR", "Article 5(1)(f)"),
        ("GDPR", "Article 32"),
    } <= references
    assert {c.framework for c in mapping.controls} >= {"NIST AI 100-4", "NIST AI RMF"}
    assert len({c.id for c in mapping.controls}) == len(mapping.controls)
    watermark = [c for c in mapping.controls if "watermark" in c.not_covered]
    assert watermark, "the mapping must say plainly that watermarks are not covered"
