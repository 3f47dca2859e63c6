"""Quarantined records carry Confluent's data-contract DLQ headers beside our own."""

from __future__ import annotations

import json

from confluent_kafka.schema_registry.rules.dlq.dlq_action import DlqAction

from lineage_guard.contract.verdicts import Violation
from lineage_guard.io import kafka
from lineage_guard.items import Item, Source


def test_header_names_are_confluents_own() -> None:
    assert (
        kafka.DLQ_RULE_NAME,
        kafka.DLQ_RULE_MODE,
        kafka.DLQ_RULE_SUBJECT,
        kafka.DLQ_RULE_TOPIC,
        kafka.DLQ_RULE_EXCEPTION,
    ) == (
        DlqAction.RULE_NAME,
        DlqAction.RULE_MODE,
        DlqAction.RULE_SUBJECT,
        DlqAction.RULE_TOPIC,
        DlqAction.RULE_EXCEPTION,
    )


def test_quarantine_headers_name_the_first_rule_and_every_reason() -> None:
    violations = (
        Violation(rule="generator_required", column="provenance.generator", message="No généra"),
        Violation(rule="disclosure_required", column="provenance.disclosure", message="No mark"),
    )
    item = Item(
        source=Source(topic="crm.contacts", partition=2, offset=41, value=b"x"),
        stopped_at="validate",
        violations=violations,
    )
    headers = dict(kafka.quarantine_headers(item))
    assert headers["__rule.name"] == b"generator_required"
    assert headers["__rule.mode"] == b"READ"
    assert headers["__rule.subject"] == b"crm.contacts-value"
    assert headers["__rule.topic"] == b"crm.contacts"
    assert headers["__rule.exception"].decode() == "No généra; No mark"
    assert headers["lineage-guard.stage"] == b"validate"
    assert headers["lineage-guard.source-offset"] == b"41"
    assert [v["rule"] for v in json.loads(headers["lineage-guard.reasons"])] == [
        "generator_required",
        "disclosure_required",
    ]


def test_a_long_exception_header_is_cut_on_a_character_boundary() -> None:
    message = "é" * 5000  # 10,000 bytes of two-byte characters
    item = Item(
        source=Source(topic="t", partition=0, offset=0),
        stopped_at="validate",
        violations=(Violation(rule="wrong_type", column=None, message=message),),
    )
    value = dict(kafka.quarantine_headers(item))["__rule.exception"]
    assert len(value) <= kafka.MAX_EXCEPTION_BYTES
    assert value.decode() == "é" * (kafka.MAX_EXCEPTION_BYTES // 2)
