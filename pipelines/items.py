"""The values that flow between the guard's stages: micro-batches of items.

A `Batch` holds the messages of one source partition (or one input file) in offset order; an
`Item` is one message with what the stages have found out about it so far. Stages return new
items (never mutate their input), so Beam may retry or re-run them freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lineage_guard.contract.verdicts import Violation

Headers = list[tuple[str, bytes | None]]


@dataclass(frozen=True, kw_only=True, slots=True)
class Source:
    """Where a message came from, and its bytes as they were (files: path, 0, record index)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    headers: Headers | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Item:
    source: Source
    record: dict[str, Any] | None = None  # set by decode (or by the file reader)
    schema: str | None = None  # the writer schema's full name, when known
    error: str | None = None  # why the file reader could not decode it
    stopped_at: str | None = None  # the stage that quarantined or blocked it
    blocked: bool = False  # True: a sink policy refused it; False: quarantined
    violations: tuple[Violation, ...] = field(default=())

    @property
    def allowed(self) -> bool:
        return self.stopped_at is None


@dataclass(frozen=True, kw_only=True)
class Batch:
    topic: str
    partition: int
    items: tuple[Item, ...]

    @property
    def next_offset(self) -> int:
        """The offset to commit once this batch is written."""
        return self.items[-1].source.offset + 1
