"""Parents, text cleaning and the plain-Python `Guard` (the chain itself: `guard_chain`).

A derived record's parents (`class_below_parent`) are looked up, never remembered by one
worker: first among the records of the same run (`ParentIndex`, from `guard_chain.index_keys`
over everything the run read), then in the lineage store (`LineageStore.content_classes`),
which holds every record any worker, round or earlier run recorded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lineage_guard.contract.records import CLASS_RANK, provenance_of, record_id_of
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.contract.verdicts import Violation
from lineage_guard.items import Item

ClassLookup = Callable[[Collection[str]], Mapping[str, str]]  # `LineageStore.content_classes`


def parent_key(record_id: str) -> bytes:
    """A record id as `ParentIndex` holds it: its 16-byte BLAKE2b digest (two ids share one
    with a chance of 2^-64 among 4 billion ids)."""
    return hashlib.blake2b(record_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def index_keys(pairs: Iterable[tuple[str, int]]) -> tuple[bytes, bytes]:
    """(record id, rank) pairs as one `ParentIndex` part: the concatenated keys of the
    SYNTHETIC and of the AI_ASSISTED ones, unsorted."""
    synthetic: list[bytes] = []
    ai_assisted: list[bytes] = []
    for record_id, rank in pairs:
        (synthetic if rank >= 2 else ai_assisted).append(parent_key(record_id))
    return b"".join(synthetic), b"".join(ai_assisted)


@dataclass(frozen=True)
class ParentIndex:
    """The generated records of a run, compactly: the sorted, distinct 16-byte keys
    (`parent_key`) of its SYNTHETIC and of its AI_ASSISTED records, 16 bytes per record
    whatever the number of workers (a side input every worker holds once)."""

    synthetic: bytes = b""
    ai_assisted: bytes = b""

    @classmethod
    def merge(cls, parts: Iterable[tuple[bytes, bytes]]) -> ParentIndex:
        """The index of several `index_keys` parts."""
        synthetic: list[bytes] = []
        ai_assisted: list[bytes] = []
        for s, a in parts:
            synthetic.append(s)
            ai_assisted.append(a)
        return cls(_sorted_keys(b"".join(synthetic)), _sorted_keys(b"".join(ai_assisted)))

    def ranks_of(self, record_ids: Collection[str]) -> dict[str, int]:
        """The class rank of each of `record_ids` that is in the index (SYNTHETIC first)."""
        import numpy as np

        if not record_ids or not (self.synthetic or self.ai_assisted):
            return {}
        ids = list(record_ids)
        wanted = np.array([parent_key(i) for i in ids], dtype="S16")
        found: dict[str, int] = {}
        for keys, rank in ((self.ai_assisted, 1), (self.synthetic, 2)):
            known = np.frombuffer(keys, dtype="S16")
            if not len(known):
                continue
            at = np.minimum(np.searchsorted(known, wanted), len(known) - 1)
            for n in np.flatnonzero(known[at] == wanted):
                found[ids[n]] = rank  # a record of both classes: the higher one, written last
        return found


def _sorted_keys(keys: bytes) -> bytes:
    import numpy as np

    return bytes(np.unique(np.frombuffer(keys, dtype="S16")).tobytes()) if keys else b""


def parent_ids(records: Iterable[Any]) -> set[str]:
    found: set[str] = set()
    for record in records:
        parents = provenance_of(record).get("parent_record_ids")
        if isinstance(parents, list):
            found.update(p for p in parents if isinstance(p, str))
    return found


def parent_ranks(
    records: Sequence[Any],
    index: ParentIndex | None = None,
    lookup: ClassLookup | None = None,
) -> dict[str, int]:
    """The class rank of every parent of `records` that can be found: among `records`
    themselves, in `index` (the run's generated records), then through `lookup` (the lineage
    store) for the rest. A parent found nowhere is not checked."""
    own = ((record_id_of(r), provenance_of(r).get("content_class")) for r in records)
    return known_ranks(parent_ids(records), own, index, lookup)


def known_ranks(
    wanted: Collection[str],
    own: Iterable[tuple[str | None, Any]],
    index: ParentIndex | None = None,
    lookup: ClassLookup | None = None,
) -> dict[str, int]:
    """The class rank of each `wanted` parent that can be found: among `own` (the batch's
    records, as (record id, content class)), in `index`, then through `lookup`."""
    if not wanted:
        return {}
    ranks: dict[str, int] = {}
    for record_id, content_class in own:
        rank = CLASS_RANK.get(content_class) if type(content_class) is str else None
        if record_id is not None and record_id in wanted and rank is not None:
            ranks[record_id] = max(rank, ranks.get(record_id, 0))
    if index is not None:
        for parent, rank in index.ranks_of(wanted).items():
            ranks[parent] = max(rank, ranks.get(parent, 0))
    missing = [p for p in wanted if p not in ranks or ranks[p] < 2]
    if lookup is not None and missing:
        for parent, content_class in lookup(missing).items():
            rank = CLASS_RANK.get(content_class)
            if rank is not None:
                ranks[parent] = max(rank, ranks.get(parent, 0))
    return ranks


def clean(text: str) -> str:
    """Text a database can store, so one odd record cannot stop the lineage store: NUL becomes
    U+FFFD and a lone surrogate (possible in decoded JSON) `?` (UTF-8's "replace" encoding;
    hops written so keep their leaves, so it stays)."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


@dataclass(frozen=True, kw_only=True)
class Checked:
    """What the guard decided about one record (`Guard.check`)."""

    record_id: str | None
    decision: str  # "allowed", "quarantined" (invalid provenance) or "blocked" (a sink policy)
    stage: str | None  # where it stopped: "decode", "validate" or "enforce"; None if allowed
    violations: tuple[Violation, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.decision == "allowed"

    @classmethod
    def of(cls, item: Item) -> Checked:
        return cls(
            record_id=record_id_of(item.record),
            decision="allowed" if item.allowed else ("blocked" if item.blocked else "quarantined"),
            stage=None if item.stopped_at is None else str(item.stopped_at),
            violations=item.violations,
        )


class Guard:
    """The guard without Beam: validate provenance and apply sink policies to records.

        guard = Guard(policies=["production", "tenant:acme"])
        for result in guard.check(records):      # decoded records: dicts
            if not result.allowed:
                print(result.record_id, result.decision, [v.rule for v in result.violations])

    Each `check` call is one micro-batch (give it hundreds or thousands of records). Parents
    of derived records are looked up among the records of the same call and, when
    `lineage_store` is given, in that store (`LineageStore.content_classes`). Nothing is
    recorded: `check` is a pure question.
    """

    def __init__(
        self,
        policies: Sequence[str] = ("production",),
        *,
        engine: str = "compiled",
        lineage_store: str | None = None,
    ) -> None:
        from lineage_guard.contract.policies import parse_policy

        self.policies = [parse_policy(text) for text in policies]
        self.validator = SuiteValidator(engine=engine)
        self.lineage_store = lineage_store
        self._store: Any = None

    def check(self, records: Iterable[Mapping[str, Any]]) -> list[Checked]:
        from lineage_guard import arrow_batch, guard_chain

        given = [dict(record) for record in records]
        if not given:
            return []
        batch = arrow_batch.from_records("check", 0, given)
        batch = guard_chain.validate(batch, self.validator, lookup=self._lookup())
        batch = guard_chain.enforce(batch, self.policies)
        stopped = batch.column("stopped_at").to_pylist()
        blocked = batch.column("blocked").to_pylist()
        return [
            Checked(
                record_id=record_id_of(record),
                decision="allowed"
                if stopped[i] is None
                else ("blocked" if blocked[i] else "quarantined"),
                stage=stopped[i],
                violations=batch.violations.get(i, ()),
            )
            for i, record in enumerate(given)
        ]

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _lookup(self) -> ClassLookup | None:
        if self.lineage_store is None:
            return None
        if self._store is None:
            from lineage_guard.lineage.store import open_store

            self._store = open_store(self.lineage_store)
        lookup: ClassLookup = self._store.content_classes
        return lookup
