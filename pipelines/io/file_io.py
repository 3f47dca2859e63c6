"""The embedded default's IO: Avro/JSON Lines files in, JSON Lines files out.

Each input file is read into batches like a Kafka partition (topic = the file's path,
partition 0, offset = the record's index). The sink writes, per input file, the allowed
records to `<name>.allowed.jsonl` and the quarantined ones, with their reasons, to
`<name>.quarantine.jsonl` in the output directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from lineage_guard.io.files import json_default, read_records
from lineage_guard.items import Batch, Item, Source


def read_file(path: str, batch_size: int) -> Iterator[Batch]:
    items: list[Item] = []
    for record in read_records(Path(path)):
        source = Source(topic=path, partition=0, offset=record.index)
        items.append(Item(source=source, record=record.value, error=record.error))
        if len(items) >= batch_size:
            yield Batch(topic=path, partition=0, items=tuple(items))
            items = []
    if items:
        yield Batch(topic=path, partition=0, items=tuple(items))


def output_names(paths: Sequence[str]) -> dict[str, str]:
    """A distinct output base name per input file (`contacts`, `contacts-2`, …)."""
    names: dict[str, str] = {}
    for path in paths:
        stem = Path(path).name.split(".")[0] or "input"
        name, n = stem, 1
        while name in names.values():
            n += 1
            name = f"{stem}-{n}"
        names[path] = name
    return names


class FileSink:
    """Appends guarded records to per-input JSON Lines files; once a flush has put them on
    disk, reports each written batch as answered (`on_answered`, as `KafkaSink` does)."""

    def __init__(
        self,
        out_dir: str,
        names: dict[str, str],
        on_answered: Callable[[list[tuple[Any, int, list[Any]]]], None] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.names = names
        self.on_answered = on_answered
        self._handles: dict[str, IO[str]] = {}
        self._written: list[tuple[Any, int, list[Any]]] = []

    def destinations(self, source: str) -> tuple[str, str]:
        base = self.out_dir / self.names[source]
        return f"{base}.allowed.jsonl", f"{base}.quarantine.jsonl"

    def write(self, batch: Batch, receipt: Any = None) -> None:
        allowed_path, quarantine_path = self.destinations(batch.topic)
        for item in batch.items:
            if item.allowed:
                line = json.dumps(item.record, ensure_ascii=False, default=json_default)
                self._handle(allowed_path).write(line + "\n")
            else:
                self._handle(quarantine_path).write(
                    json.dumps(quarantine_entry(item), ensure_ascii=False, default=json_default)
                    + "\n"
                )

        if receipt is not None:
            self._written.append((receipt, len(batch.items), []))

    def flush(self) -> None:
        for handle in self._handles.values():
            handle.flush()
            os.fsync(handle.fileno())
        written, self._written = self._written, []
        if written and self.on_answered is not None:
            self.on_answered(written)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def _handle(self, path: str) -> IO[str]:
        if path not in self._handles:
            self._handles[path] = open(path, "a", encoding="utf-8")  # noqa: SIM115
        return self._handles[path]


def quarantine_entry(item: Item) -> dict[str, Any]:
    return {
        "record": item.record,
        "stage": item.stopped_at,
        "violations": [v.to_dict() for v in item.violations],
        "source": {"file": item.source.topic, "index": item.source.offset},
    }
