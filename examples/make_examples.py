"""Regenerates the example files in this folder: `python examples/make_examples.py`.

- `contacts_ok.avro`, `email_activities_ok.avro`, `media_assets_ok.avro`: records that all
  carry intact provenance (human, AI-assisted and synthetic), written with the contract schemas.
- `contacts_synced_stripped.avro`: contacts after a faulty CRM sync job that stripped provenance
  from some records. The sync job wrote them with its own schema, in which `provenance` is
  nullable: exactly how stripped metadata arrives in practice.
- `crm_synced.jsonl`: the three entity types from the same faulty sync, as JSON Lines.
"""

from __future__ import annotations

from pathlib import Path

from lineage_guard.contract.schemas import load_schema
from lineage_guard.generate import (
    CONTACT,
    EMAIL_ACTIVITY,
    MEDIA_ASSET,
    Faults,
    faulty_sync_schema,
    generate,
)
from lineage_guard.io.files import write_avro, write_json_lines

HERE = Path(__file__).resolve().parent


def main() -> None:
    for entity, name, seed in [
        (CONTACT, "contacts", 1),
        (EMAIL_ACTIVITY, "email_activities", 2),
        (MEDIA_ASSET, "media_assets", 3),
    ]:
        records = (g.record for g in generate(200, seed=seed, entities=(entity,)))
        count = write_avro(HERE / f"{name}_ok.avro", load_schema(entity), records)
        print(f"{name}_ok.avro: {count} records")
    stripped = [g for g in generate(200, seed=4, entities=(CONTACT,), faults=Faults(stripped=0.1))]
    write_avro(
        HERE / "contacts_synced_stripped.avro",
        faulty_sync_schema(CONTACT),
        (g.record for g in stripped),
    )
    bad = sum(g.fault == "stripped" for g in stripped)
    print(f"contacts_synced_stripped.avro: {len(stripped)} records, {bad} stripped")
    mixed = list(generate(300, seed=5, faults=Faults(stripped=0.05)))
    write_json_lines(HERE / "crm_synced.jsonl", (g.record for g in mixed))
    bad = sum(g.fault == "stripped" for g in mixed)
    print(f"crm_synced.jsonl: {len(mixed)} records, {bad} stripped")


if __name__ == "__main__":
    main()
