from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest

from lineage_guard.contract.schemas import ENTITY_FILES, load_schema
from lineage_guard.generate import CONTACT, EMAIL_ACTIVITY, MEDIA_ASSET, generate
from lineage_guard.lineage.errors import SchemaError

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_provenance_is_defined_once_and_referenced_by_full_name() -> None:
    for relative in ENTITY_FILES.values():
        raw = json.loads((SCHEMAS / relative).read_text())
        fields = {f["name"]: f for f in raw["fields"]}
        assert fields["provenance"]["type"] == "lineage_guard.Provenance"
        assert 'Provenance"' not in (SCHEMAS / relative).read_text().replace(
            'lineage_guard.Provenance"', ""
        )
        assert fields["record_id"]["type"] == "string"
        assert fields["tenant_id"]["type"] == "string"


def test_contract_fields_match_architecture() -> None:
    provenance = load_schema("lineage_guard.Provenance")
    fields = {f["name"]: f["type"] for f in provenance["fields"]}
    assert list(fields) == [
        "content_class",
        "origin_env",
        "source_system",
        "generator",
        "generated_at",
        "disclosure",
        "parent_record_ids",
        "digital_source_type",
    ]
    assert fields["digital_source_type"] == ["null", "string"]
    assert fields["content_class"]["symbols"] == ["HUMAN", "AI_ASSISTED", "SYNTHETIC"]
    assert fields["content_class"]["name"] == "lineage_guard.ContentClass"
    assert fields["origin_env"]["symbols"] == ["PRODUCTION", "STAGING", "TEST"]
    assert fields["generator"][1]["name"] == "lineage_guard.Generator"
    assert fields["generated_at"][1]["logicalType"] == "timestamp-millis"
    assert fields["parent_record_ids"]["items"] == "string"


@pytest.mark.parametrize("entity", [CONTACT, EMAIL_ACTIVITY, MEDIA_ASSET])
def test_entity_schemas_resolve_and_round_trip(entity: str) -> None:
    records = [g.record for g in generate(30, seed=11, entities=(entity,))]
    buffer = io.BytesIO()
    fastavro.writer(buffer, load_schema(entity), records)
    buffer.seek(0)
    assert list(fastavro.reader(buffer)) == [
        {**r, **({"caption": r.get("caption")} if entity == MEDIA_ASSET else {})} for r in records
    ]


def test_short_and_full_names_load_the_same_schema() -> None:
    assert load_schema("contact") == load_schema("lineage_guard.crm.Contact")


def test_unknown_schema_names_the_known_ones() -> None:
    with pytest.raises(SchemaError, match=r"Unknown schema `crm\.lead`.*`contact`"):
        load_schema("crm.lead")


def test_public_api_names_resolve() -> None:
    import lineage_guard

    assert len(set(lineage_guard.__all__)) == len(lineage_guard.__all__)
    for name in lineage_guard.__all__:
        value = getattr(lineage_guard, name)
        assert getattr(value, "__name__", name) == name  # classes and functions by their name


def test_the_previous_provenance_is_kept_and_the_change_is_compatible() -> None:
    """Version 1 (`schemas/history/provenance.1.avsc`) is today's schema without
    `digital_source_type`, which is added as `["null", "string"]` with default null: Avro's
    resolution rules then read version-1 data with today's schema (the field null), and
    today's data with version 1 (the field skipped)."""
    old, new = load_schema("lineage_guard.Provenance@1"), load_schema("provenance")
    added = [f for f in new["fields"] if f["name"] == "digital_source_type"]
    assert [f for f in new["fields"] if f["name"] != "digital_source_type"] == old["fields"]
    assert added == [
        {
            "name": "digital_source_type",
            "type": ["null", "string"],
            "default": None,
            "doc": added[0]["doc"],
        }
    ]
    for entity in (CONTACT, EMAIL_ACTIVITY, MEDIA_ASSET):
        records = [g.record for g in generate(20, seed=12, entities=(entity,))]
        for record in records:
            record["provenance"].pop("digital_source_type")
        buffer = io.BytesIO()
        fastavro.writer(buffer, load_schema(f"{entity}@1"), records)
        buffer.seek(0)
        read = list(fastavro.reader(buffer, reader_schema=load_schema(entity)))
        assert [r["provenance"]["digital_source_type"] for r in read] == [None] * 20
        buffer = io.BytesIO()
        fastavro.writer(
            buffer,
            load_schema(entity),
            [g.record for g in generate(5, seed=1) if g.schema == entity] or records,
        )
        buffer.seek(0)
        assert all(
            "digital_source_type" not in r["provenance"]
            for r in fastavro.reader(buffer, reader_schema=load_schema(f"{entity}@1"))
        )


def test_an_unknown_schema_version_names_the_known_ones() -> None:
    with pytest.raises(SchemaError, match=r"Unknown schema version `contact@7`.*`@1`"):
        load_schema("contact@7")
    assert load_schema("contact@1")["name"] == "lineage_guard.crm.Contact"
    assert load_schema("contact@1") != load_schema("contact")
