"""The embedded default's IO: Avro/JSON Lines files in, JSON Lines files out.

Each input file is read into batches like a Kafka partition (topic = the file's path or URI,
partition 0, offset = the record's index). Paths are resolved on the launcher; workers reach
them through Beam's `FileSystems` (a local path, or any scheme Beam has a filesystem for).

The sink writes each batch to its own part files, named by the batch's source position
(`<out>/.parts/<name>/<first offset>.allowed.jsonl` and `.quarantine.jsonl`): a retried bundle
rewrites the same parts, never appends twice. `finalize_files`, run on the launcher once the
pipeline is done, joins each input's parts in offset order into `<name>.allowed.jsonl` (the
allowed records) and `<name>.quarantine.jsonl` (the stopped ones, with their reasons).
Local part and output files are `0600` whatever the umask: they hold the records' personal
data. (Object stores have no file modes: their buckets' access rules apply.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from lineage_guard import guard_chain
from lineage_guard.arrow_batch import GuardBatch, from_file_rows
from lineage_guard.contract.records import is_unicode
from lineage_guard.io.files import json_default, read_records
from lineage_guard.items import Item
from lineage_guard.lineage.private import FILE_MODE

PARTS = ".parts"
KINDS = ("allowed", "quarantine")


def is_uri(path: str) -> bool:
    """True for `scheme://…` (gs://, s3://, hdfs://…); False for a local path."""
    return "://" in path


def read_file(path: str, batch_size: int) -> Iterator[GuardBatch]:
    if is_uri(path):
        yield from _read_remote(path, batch_size)
        return
    indices: list[int] = []
    records: list[Any] = []
    errors: list[str | None] = []
    for record in read_records(Path(path)):
        indices.append(record.index)
        records.append(record.value)
        errors.append(record.error)
        if len(indices) >= batch_size:
            yield from_file_rows(path, indices, records, errors)
            indices, records, errors = [], [], []
    if indices:
        yield from_file_rows(path, indices, records, errors)


def _read_remote(uri: str, batch_size: int) -> Iterator[GuardBatch]:
    """A `FileSystems` URI: copied to a local temporary file, then read like a local one."""
    from apache_beam.io.filesystems import FileSystems

    with tempfile.TemporaryDirectory(prefix="lineage-guard-") as folder:
        local = os.path.join(folder, "input")
        with FileSystems.open(uri) as source, open(local, "wb") as target:
            shutil.copyfileobj(source, target)
        for batch in read_file(local, batch_size):
            yield dataclasses.replace(batch, topic=uri)


def output_names(paths: Sequence[str]) -> dict[str, str]:
    """A distinct output base name per input file (`contacts`, `contacts-2`, …)."""
    names: dict[str, str] = {}
    for path in paths:
        stem = path.rstrip("/").rsplit("/", 1)[-1].split(".")[0] or "input"
        name, n = stem, 1
        while name in names.values():
            n += 1
            name = f"{stem}-{n}"
        names[path] = name
    return names


def join(folder: str, *names: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return str(FileSystems.join(folder, *names))


class FileSink:
    """Writes each guarded batch to its own part files (see the module docstring); once a
    flush has put them on disk, reports each written batch as answered (`on_answered`, as
    `KafkaSink` does)."""

    def __init__(
        self,
        out_dir: str,
        names: dict[str, str],
        on_answered: Callable[[list[tuple[Any, int, list[Any]]]], None] | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.names = names
        self.on_answered = on_answered
        self._written: list[tuple[Any, int, list[Any]]] = []

    def destinations(self, source: str) -> tuple[str, str]:
        base = join(self.out_dir, self.names[source])
        return f"{base}.allowed.jsonl", f"{base}.quarantine.jsonl"

    def write(self, batch: GuardBatch, receipt: Any = None) -> None:
        """Records read from Kafka by the Rust reader are read again by fastavro here
        (`guard_chain.with_records`): a file holds the record, not its bytes."""
        batch = guard_chain.with_records(batch)
        lines: dict[str, list[str]] = {kind: [] for kind in KINDS}
        records = batch.records if batch.records is not None else (None,) * len(batch)
        stopped_at = batch.stopped_at()
        stopped = [i for i, stage in enumerate(stopped_at) if stage is not None]
        items = dict(zip(stopped, batch.items_at(stopped), strict=True))
        for i, stage in enumerate(stopped_at):
            if stage is None:
                lines["allowed"].append(json_line(records[i]))
            else:
                lines["quarantine"].append(json_line(quarantine_entry(items[i])))
        folder = join(self.out_dir, PARTS, self.names[batch.topic])
        first = batch.column("offset")[0].as_py()
        for kind, text in lines.items():
            if text:
                part = join(folder, f"{first:012d}.{kind}.jsonl")
                _write_part(part, ("\n".join(text) + "\n").encode("utf-8"))

        if receipt is not None:
            self._written.append((receipt, len(batch), []))

    def flush(self) -> None:
        written, self._written = self._written, []
        if written and self.on_answered is not None:
            self.on_answered(written)

    def close(self) -> None:
        pass


def json_line(value: Any) -> str:
    """One JSON Lines line that UTF-8 can hold: non-ASCII text as itself, except in a record
    holding a lone surrogate (JSON may carry `"\\ud800"`, UTF-8 cannot): that line is written
    ASCII-escaped, so it reads back as the same value."""
    line = json.dumps(value, ensure_ascii=False, default=json_default)
    if line.isascii() or is_unicode(line):
        return line
    return json.dumps(value, ensure_ascii=True, default=json_default)


def _write_part(path: str, data: bytes) -> None:
    """Writes (or replaces, for a retried batch) one part file, on disk before it returns."""
    if is_uri(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as handle:  # an object store commits it on close
            handle.write(data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _private(path) as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _private(path: str) -> BinaryIO:
    """`path` opened for writing (truncated) as a `0600` file, whatever the umask: outputs hold
    the records' personal data, as the lineage store and reports do (`lineage.private`)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # a file that existed keeps its mode through O_CREAT
    return os.fdopen(fd, "wb")


def finalize_files(out_dir: str, names: dict[str, str]) -> None:
    """Joins each input's part files, in offset order, into its two output files."""
    from apache_beam.io.filesystems import FileSystems

    for name in names.values():
        folder = join(out_dir, PARTS, name)
        for kind in KINDS:
            pattern = join(folder, f"*.{kind}.jsonl")
            found = FileSystems.match([pattern])[0].metadata_list
            parts = sorted(m.path for m in found)  # zero-padded offsets sort in offset order
            if not parts:
                continue
            output = join(out_dir, f"{name}.{kind}.jsonl")
            opened = FileSystems.create(output) if is_uri(output) else _private(output)
            with opened as target:
                for part in parts:
                    with FileSystems.open(part) as source:
                        shutil.copyfileobj(source, target)
            FileSystems.delete(parts)
    parts_root = join(out_dir, PARTS)
    if not is_uri(out_dir):
        shutil.rmtree(parts_root, ignore_errors=True)


def clear_outputs(out_dir: str, names: dict[str, str]) -> None:
    """Removes a previous run's outputs and parts for these inputs (launcher side)."""
    from apache_beam.io.filesystems import FileSystems

    stale = [
        path
        for name in names.values()
        for path in (
            *(join(out_dir, f"{name}.{kind}.jsonl") for kind in KINDS),
            join(out_dir, PARTS, name),
        )
        if FileSystems.exists(path)
    ]
    if stale:
        FileSystems.delete(stale)


def quarantine_entry(item: Item) -> dict[str, Any]:
    return {
        "record": item.record,
        "stage": item.stopped_at,
        "violations": [v.to_dict() for v in item.violations],
        "source": {"file": item.source.topic, "index": item.source.offset},
    }
