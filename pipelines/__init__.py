"""lineage-guard: provenance checks, sink policies and per-record lineage for CRM data that
carries AI-generated content, as a library and as the `lineage-guard` command.

The public API is re-exported here and listed in `__all__`; everything else may change.
Names are imported on first use (PEP 562), so `import lineage_guard` stays cheap and the pure
core (`lineage_guard.contract`, `lineage_guard.lineage`) never pulls in Beam or Kafka.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name → the module that defines it
_EXPORTS: dict[str, str] = {
    "Violation": "lineage_guard.contract.verdicts",
    "Verdict": "lineage_guard.contract.verdicts",
    "SuiteValidator": "lineage_guard.contract.validate",
    "load_schema": "lineage_guard.contract.schemas",
    "parse_policy": "lineage_guard.contract.policies",
    "Decoder": "lineage_guard.io.decode",
    "encode_single_object": "lineage_guard.io.decode",
    "GuardConfig": "lineage_guard.guard",
    "KafkaIO": "lineage_guard.guard",
    "FilesIO": "lineage_guard.guard",
    "LineageStore": "lineage_guard.lineage.store",
    "open_store": "lineage_guard.lineage.store",
    "LineageGuardError": "lineage_guard.lineage.errors",
}

__all__ = [
    "Decoder",
    "FilesIO",
    "GuardConfig",
    "KafkaIO",
    "LineageGuardError",
    "LineageStore",
    "SuiteValidator",
    "Verdict",
    "Violation",
    "encode_single_object",
    "load_schema",
    "open_store",
    "parse_policy",
]

if TYPE_CHECKING:
    from lineage_guard.contract.policies import parse_policy
    from lineage_guard.contract.schemas import load_schema
    from lineage_guard.contract.validate import SuiteValidator
    from lineage_guard.contract.verdicts import Verdict, Violation
    from lineage_guard.guard import FilesIO, GuardConfig, KafkaIO
    from lineage_guard.io.decode import Decoder, encode_single_object
    from lineage_guard.lineage.errors import LineageGuardError
    from lineage_guard.lineage.store import LineageStore, open_store


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lineage_guard' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
