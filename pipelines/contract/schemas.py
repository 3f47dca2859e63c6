"""Loads the Avro contract from `schemas/`: the only way the code reads a schema.

`lineage_guard.Provenance` is defined once in `schemas/provenance.avsc`; entity schemas under
`schemas/crm/` reference it by full name, and fastavro resolves the reference here.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import fastavro

from lineage_guard.lineage.errors import SchemaError

PROVENANCE = "lineage_guard.Provenance"
ENTITY_FILES = {
    "lineage_guard.crm.Contact": "crm/contact.avsc",
    "lineage_guard.crm.EmailActivity": "crm/email_activity.avsc",
    "lineage_guard.crm.MediaAsset": "crm/media_asset.avsc",
}
# Short names accepted wherever a schema is named on the command line.
SHORT_NAMES = {
    "contact": "lineage_guard.crm.Contact",
    "email_activity": "lineage_guard.crm.EmailActivity",
    "media_asset": "lineage_guard.crm.MediaAsset",
    "provenance": PROVENANCE,
}

Schema = dict[str, Any]


def _schema_dir() -> Traversable:
    return resources.files("lineage_guard.schemas")


def _read(relative: str) -> Any:
    path = _schema_dir().joinpath(*relative.split("/"))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"Cannot read schema file `schemas/{relative}`: {exc}") from exc


@cache
def _provenance_types() -> dict[str, Schema]:
    """The named types of `provenance.avsc`, for resolving references to them."""
    named: dict[str, Schema] = {}
    fastavro.parse_schema(_read("provenance.avsc"), named_schemas=named)
    return named


@cache
def load_schema(name: str) -> Schema:
    """The parsed, self-contained schema called `name` (full or short name).

    References to `lineage_guard.Provenance` are expanded, so the result can be handed to
    fastavro's readers and writers (and embedded in container files) as it is.
    """
    full = SHORT_NAMES.get(name, name)
    if full == PROVENANCE:
        return _as_record(fastavro.parse_schema(_read("provenance.avsc")))
    if full not in ENTITY_FILES:
        known = ", ".join(f"`{n}`" for n in sorted(SHORT_NAMES))
        raise SchemaError(f"Unknown schema `{name}`. Known schemas: {known}.")
    try:
        return _as_record(
            fastavro.parse_schema(
                _read(ENTITY_FILES[full]), named_schemas=dict(_provenance_types()), expand=True
            )
        )
    except (fastavro.schema.SchemaParseException, fastavro.schema.UnknownType) as exc:
        raise SchemaError(f"Schema `{full}` does not parse: {exc}") from exc


def _as_record(parsed: Any) -> Schema:
    if not isinstance(parsed, dict):
        raise SchemaError(f"Expected a record schema, got `{parsed!r:.60}`.")
    return parsed
