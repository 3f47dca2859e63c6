"""Sink policies: what may reach a sink once a record's provenance has passed validation.

Pure core. A policy is parsed from its command-line form and judges one record at a time:

- `production`: only records whose `origin_env` is PRODUCTION may pass; TEST and STAGING
  records are leak attempts (`leak_test_origin`, `leak_staging_origin`).
- `tenant:ID`: only records of tenant ID may pass (`tenant_mismatch`).
- `training`, `training:real`, `training:synthetic`, `training:mixed`: a training export holds
  real (HUMAN) or generated (AI_ASSISTED, SYNTHETIC) records, not both. `training` takes the
  kind of the first record it sees; records of the other kind are blocked (`training_mix`).
  `training:mixed` declares the mix: nothing is blocked and the ratio is counted.

Records whose provenance failed validation never reach the policies: they are quarantined at
the validate stage, whatever the sink.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lineage_guard.contract.records import describe, provenance_of, record_id_of
from lineage_guard.contract.verdicts import Violation
from lineage_guard.lineage.errors import ConfigError

GENERATED = {"AI_ASSISTED", "SYNTHETIC"}


@dataclass(kw_only=True)
class ProductionPolicy:
    name: str = "production"

    def judge(self, record: Mapping[str, Any]) -> Violation | None:
        origin = provenance_of(record).get("origin_env")
        if origin == "PRODUCTION":
            return None
        return Violation(
            rule=f"leak_{str(origin).lower()}_origin",
            column="provenance.origin_env",
            message=f"{describe(record_id_of(record))}: origin `{origin}` may not reach a "
            "production sink.",
        )


@dataclass(kw_only=True)
class TenantPolicy:
    tenant_id: str
    name: str = "tenant"

    def judge(self, record: Mapping[str, Any]) -> Violation | None:
        tenant = record.get("tenant_id")
        if tenant == self.tenant_id:
            return None
        return Violation(
            rule="tenant_mismatch",
            column="tenant_id",
            message=f"{describe(record_id_of(record))}: tenant `{tenant}` may not reach the "
            f"sink of tenant `{self.tenant_id}`.",
        )


@dataclass(kw_only=True)
class TrainingPolicy:
    """One training export: real or generated records, or a declared mix of both."""

    kind: str | None = None  # "real", "synthetic", "mixed", or None until the first record
    name: str = "training"
    counts: dict[str, int] = field(default_factory=lambda: {"real": 0, "synthetic": 0})

    def judge(self, record: Mapping[str, Any]) -> Violation | None:
        content_class = provenance_of(record).get("content_class")
        kind = "synthetic" if content_class in GENERATED else "real"
        if self.kind is None:
            self.kind = kind
        if self.kind not in ("mixed", kind):
            return Violation(
                rule="training_mix",
                column="provenance.content_class",
                message=f"{describe(record_id_of(record))}: a {content_class} record may not "
                f"join a {self.kind} training export; declare `training:mixed` to allow the mix.",
            )
        self.counts[kind] += 1
        return None

    @property
    def synthetic_ratio(self) -> float | None:
        total = self.counts["real"] + self.counts["synthetic"]
        return self.counts["synthetic"] / total if total else None


Policy = ProductionPolicy | TenantPolicy | TrainingPolicy


def parse_policy(text: str) -> Policy:
    """`production`, `tenant:ID`, `training`, `training:real|synthetic|mixed`."""
    head, _, arg = text.partition(":")
    if head == "production" and not arg:
        return ProductionPolicy()
    if head == "tenant" and arg.strip():
        return TenantPolicy(tenant_id=arg)
    if head == "training" and arg in ("", "real", "synthetic", "mixed"):
        return TrainingPolicy(kind=arg or None)
    raise ConfigError(
        f"Unknown sink policy `{text}`. Use `production`, `tenant:ID`, `training`, "
        "`training:real`, `training:synthetic` or `training:mixed`."
    )


def judge(policies: Sequence[Policy], record: Mapping[str, Any]) -> tuple[Violation, ...]:
    """Every policy's objection to the record; empty when it may pass.

    Training policies judge last, and only records nothing else refused: a blocked record
    neither fixes an export's kind nor counts in its ratio.
    """
    objections = tuple(
        v
        for policy in policies
        if not isinstance(policy, TrainingPolicy) and (v := policy.judge(record)) is not None
    )
    if objections:
        return objections
    return tuple(
        v
        for policy in policies
        if isinstance(policy, TrainingPolicy) and (v := policy.judge(record)) is not None
    )
