"""Validates OpenLineage events against the OpenLineage spec's own JSON schemas.

The spec files are kept in `tests/openlineage-spec/` (Apache-2.0, see its NOTICE). Each event is
checked against `OpenLineage.json`; then every facet in it is checked against the schema its
`_schemaURL` names (standard facets: the spec's files; lineage-guard's custom facet: the JSON
schema shipped in the package), looked up by `$id` in a `referencing.Registry`. A facet whose
schema is not known fails the check: nothing is waved through.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from lineage_guard.lineage.openlineage import facet_schemas

SPEC = Path(__file__).parent / "openlineage-spec"
EVENT_SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json"


@cache
def _registry() -> Registry:
    documents = [json.loads(SPEC.joinpath("OpenLineage.json").read_text())]
    documents += [json.loads(p.read_text()) for p in sorted(SPEC.glob("facets/*.json"))]
    documents += facet_schemas()
    resources = [(d["$id"], Resource.from_contents(d)) for d in documents]
    registry: Registry = Registry().with_resources(resources)
    return registry


def _validate(instance: Any, ref: str) -> None:
    validator = Draft202012Validator(
        {"$ref": ref},
        registry=_registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    validator.validate(instance)


def facets_of(event: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every facet of the event, as (where, facet)."""
    found = [(f"run.{k}", v) for k, v in event["run"].get("facets", {}).items()]
    found += [(f"job.{k}", v) for k, v in event["job"].get("facets", {}).items()]
    for side in ("inputs", "outputs"):
        for n, dataset in enumerate(event.get(side, [])):
            for group in ("facets", "inputFacets", "outputFacets"):
                found += [(f"{side}[{n}].{k}", v) for k, v in dataset.get(group, {}).items()]
    return found


def validate_event(event: dict[str, Any]) -> None:
    """Raises `jsonschema.ValidationError` unless the event and each of its facets is valid."""
    _validate(event, EVENT_SCHEMA)
    for where, facet in facets_of(event):
        url = facet["_schemaURL"]
        base = url.split("#", 1)[0]
        try:
            _registry()[base]
        except LookupError as exc:
            raise AssertionError(f"{where}: no schema known for `{url}`") from exc
        _validate(facet, url)
