"""The control mapping: which contract rules, sink policies and lineage queries evidence which
control (EU AI Act Art. 50, the Code of Practice, NIST AI 100-4 and AI RMF, GDPR), shipped as
data in `controls.json` and versioned there (`version`). This module only reads it.

Each control names:

- `rules`: rules of the contract suites (`expectations/provenance_contract.json`) or of the
  sink policies, by their `rule` name;
- `policies`: sink policies (`production`, `tenant`, `training`);
- `queries`: lineage queries by dotted name under `lineage_guard.` (e.g.
  `lineage.queries.leaks`), the functions the CLI and the evidence export call;
- `observations`: the kinds of observation of an evidence pack that speak to it;
- `covers` and `not_covered`: plain sentences, the second saying what the guard does not do.

`tests/unit/test_controls.py` checks that every rule, policy and query named exists.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

MAPPING_FILE = "controls.json"


@dataclass(frozen=True, kw_only=True)
class Control:
    id: str
    framework: str
    reference: str
    title: str
    rules: tuple[str, ...]
    policies: tuple[str, ...]
    queries: tuple[str, ...]
    observations: tuple[str, ...]
    covers: str
    not_covered: str


@dataclass(frozen=True, kw_only=True)
class Mapping:
    name: str
    version: str
    basis: str
    observation_kinds: dict[str, str]
    controls: tuple[Control, ...]
    sha256: str  # of the file as shipped

    def label(self, control: Control) -> str:
        return f"{control.framework} {control.reference}"


def mapping_bytes() -> bytes:
    return resources.files("lineage_guard.evidence").joinpath(MAPPING_FILE).read_bytes()


def load_mapping() -> Mapping:
    """The mapping shipped in the package."""
    data = mapping_bytes()
    document: dict[str, Any] = json.loads(data)
    return Mapping(
        name=document["mapping"],
        version=document["version"],
        basis=document["basis"],
        observation_kinds=dict(document["observation_kinds"]),
        controls=tuple(
            Control(
                id=item["id"],
                framework=item["framework"],
                reference=item["reference"],
                title=item["title"],
                rules=tuple(item["evidence"]["rules"]),
                policies=tuple(item["evidence"]["policies"]),
                queries=tuple(item["evidence"]["queries"]),
                observations=tuple(item["observations"]),
                covers=item["covers"],
                not_covered=item["not_covered"],
            )
            for item in document["controls"]
        ),
        sha256=hashlib.sha256(data).hexdigest(),
    )
