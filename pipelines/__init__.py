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
    "KafkaIO": "lineage_guard.transforms",
    "FilesIO": "lineage_guard.transforms",
    "Guard": "lineage_guard.stages",
    "Checked": "lineage_guard.stages",
    "GuardBatch": "lineage_guard.arrow_batch",
    "Batch": "lineage_guard.items",
    "Item": "lineage_guard.items",
    "Source": "lineage_guard.items",
    "BatchCoder": "lineage_guard.coders",
    "VALID": "lineage_guard.transforms",
    "QUARANTINE": "lineage_guard.transforms",
    "GUARDED": "lineage_guard.transforms",
    "ReadKafka": "lineage_guard.transforms",
    "ReadFiles": "lineage_guard.transforms",
    "DecodeRecords": "lineage_guard.transforms",
    "ParentClasses": "lineage_guard.transforms",
    "ValidateProvenance": "lineage_guard.transforms",
    "EnforcePolicies": "lineage_guard.transforms",
    "RecordHop": "lineage_guard.transforms",
    "WriteGuarded": "lineage_guard.transforms",
    "Lineage": "lineage_guard.transforms",
    "Records": "lineage_guard.transforms",
    "KafkaSettings": "lineage_guard.io.kafka",
    "PartitionRange": "lineage_guard.io.kafka",
    "LineageStore": "lineage_guard.lineage.store",
    "open_store": "lineage_guard.lineage.store",
    "LineageGuardError": "lineage_guard.lineage.errors",
    "RunStop": "lineage_guard.stop",
}

__all__ = [
    "GUARDED",
    "QUARANTINE",
    "VALID",
    "Batch",
    "BatchCoder",
    "Checked",
    "DecodeRecords",
    "Decoder",
    "EnforcePolicies",
    "FilesIO",
    "Guard",
    "GuardBatch",
    "GuardConfig",
    "Item",
    "KafkaIO",
    "KafkaSettings",
    "Lineage",
    "LineageGuardError",
    "LineageStore",
    "ParentClasses",
    "PartitionRange",
    "ReadFiles",
    "ReadKafka",
    "RecordHop",
    "Records",
    "RunStop",
    "Source",
    "SuiteValidator",
    "ValidateProvenance",
    "Verdict",
    "Violation",
    "WriteGuarded",
    "encode_single_object",
    "load_schema",
    "open_store",
    "parse_policy",
]

if TYPE_CHECKING:
    from lineage_guard.arrow_batch import GuardBatch
    from lineage_guard.coders import BatchCoder
    from lineage_guard.contract.policies import parse_policy
    from lineage_guard.contract.schemas import load_schema
    from lineage_guard.contract.validate import SuiteValidator
    from lineage_guard.contract.verdicts import Verdict, Violation
    from lineage_guard.guard import GuardConfig
    from lineage_guard.io.decode import Decoder, encode_single_object
    from lineage_guard.io.kafka import KafkaSettings, PartitionRange
    from lineage_guard.items import Batch, Item, Source
    from lineage_guard.lineage.errors import LineageGuardError
    from lineage_guard.lineage.store import LineageStore, open_store
    from lineage_guard.stages import Checked, Guard
    from lineage_guard.stop import RunStop
    from lineage_guard.transforms import (
        GUARDED,
        QUARANTINE,
        VALID,
        DecodeRecords,
        EnforcePolicies,
        FilesIO,
        KafkaIO,
        Lineage,
        ParentClasses,
        ReadFiles,
        ReadKafka,
        RecordHop,
        Records,
        ValidateProvenance,
        WriteGuarded,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lineage_guard' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
