"""Loads the Avro contract from `schemas/`: the only way the code reads a schema.

`lineage_guard.Provenance` is defined once in `schemas/provenance.avsc`; entity schemas under
`schemas/crm/` reference it by full name, and fastavro resolves the reference here.

The contract's schema history: each earlier `provenance.avsc` is kept under `schemas/history/`
(`PROVENANCE_HISTORY`), so a message or file written with it still decodes. An entity schema
as it was at provenance version N is named `FULL_NAME@N` (e.g. `lineage_guard.crm.Contact@1`,
or `contact@1`); `WRITER_SCHEMAS` lists every version whose messages the guard reads.
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
# Earlier versions of `provenance.avsc`, by version number (the current file is the next one).
# Version 2 added the optional `digital_source_type` (null by default).
PROVENANCE_HISTORY = {1: "history/provenance.1.avsc"}
# Every entity schema the guard reads messages written with: today's, then each earlier version.
WRITER_SCHEMAS = (
    *ENTITY_FILES,
    *(f"{full}@{version}" for version in PROVENANCE_HISTORY for full in ENTITY_FILES),
)
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
def _provenance_types(relative: str) -> dict[str, Schema]:
    """The named types of a `provenance.avsc`, for resolving references to them."""
    named: dict[str, Schema] = {}
    fastavro.parse_schema(_read(relative), named_schemas=named)
    return named


@cache
def load_schema(name: str) -> Schema:
    """The parsed, self-contained schema called `name` (full or short name, today's version,
    or `NAME@N` for provenance version N of the history).

    References to `lineage_guard.Provenance` are expanded, so the result can be handed to
    fastavro's readers and writers (and embedded in container files) as it is.
    """
    base, _, version = name.partition("@")
    full = SHORT_NAMES.get(base, base)
    provenance = PROVENANCE_HISTORY.get(int(version)) if version.isdigit() else None
    if version and provenance is None:
        known = ", ".join(f"`@{v}`" for v in sorted(PROVENANCE_HISTORY))
        raise SchemaError(f"Unknown schema version `{name}`. Earlier versions: {known}.")
    provenance = provenance or "provenance.avsc"
    if full == PROVENANCE:
        return _as_record(fastavro.parse_schema(_read(provenance)))
    if full not in ENTITY_FILES:
        known = ", ".join(f"`{n}`" for n in sorted(SHORT_NAMES))
        raise SchemaError(f"Unknown schema `{name}`. Known schemas: {known}.")
    try:
        return _as_record(
            fastavro.parse_schema(
                _read(ENTITY_FILES[full]),
                named_schemas=dict(_provenance_types(provenance)),
                expand=True,
            )
        )
    except (fastavro.schema.SchemaParseException, fastavro.schema.UnknownType) as exc:
        raise SchemaError(f"Schema `{full}` does not parse: {exc}") from exc


def schema_key(name: str) -> str:
    """`name`'s full name as the guard keys writer schemas: `FULL_NAME`, or `FULL_NAME@N` for
    an earlier version (`contact@1` → `lineage_guard.crm.Contact@1`)."""
    _, at, version = name.partition("@")
    return f"{load_schema(name)['name']}{at}{version}"


def _as_record(parsed: Any) -> Schema:
    if not isinstance(parsed, dict):
        raise SchemaError(f"Expected a record schema, got `{parsed!r:.60}`.")
    return parsed
