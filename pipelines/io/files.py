"""Streams records out of Avro object container files and JSON Lines files.

Nothing is loaded whole: records are yielded one at a time with their file and 0-based index,
so a 2 GB file costs the memory of one Avro block or one line. A file that cannot be read at
all (missing, corrupt header or block, not JSON Lines) raises `UnusableInputError`; a single
JSON line that is not a JSON object is a bad *record* and is yielded with its `error`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import fastavro

from lineage_guard.lineage.errors import UnusableInputError

AVRO_MAGIC = b"Obj\x01"


@dataclass(frozen=True, kw_only=True)
class FileRecord:
    file: str
    index: int
    value: Any  # the decoded record, or None when `error` is set
    error: str | None = None


def read_records(path: Path, *, position: list[int] | None = None) -> Iterator[FileRecord]:
    """Yields every record of `path` (Avro container or JSON Lines, detected by content).

    When `position` is given, `position[0]` is kept at the byte offset read so far, for
    progress display.
    """
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise UnusableInputError(f"Cannot read `{path}`: {exc.strerror or exc}.") from exc
    with handle:
        head = handle.read(len(AVRO_MAGIC))
        handle.seek(0)
        if head == AVRO_MAGIC:
            yield from _avro(path, handle, position)
        else:
            yield from _json_lines(path, handle, position)


def _avro(path: Path, handle: IO[bytes], position: list[int] | None) -> Iterator[FileRecord]:
    index = 0
    try:
        for value in fastavro.reader(handle):
            yield FileRecord(file=str(path), index=index, value=value)
            index += 1
            if position is not None and index % 1024 == 0:
                position[0] = handle.tell()
    except UnusableInputError:
        raise
    except Exception as exc:  # fastavro raises ValueError, EOFError, SchemaResolutionError, …
        where = "its header" if index == 0 else f"after record {index - 1}"
        raise UnusableInputError(
            f"Cannot decode Avro file `{path}` at {where}: "
            f"{str(exc).rstrip('.?! ') or type(exc).__name__}. "
            "The file is corrupt or truncated."
        ) from exc


def _json_lines(path: Path, handle: IO[bytes], position: list[int] | None) -> Iterator[FileRecord]:
    index = 0
    for line_number, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
            error = None if isinstance(value, dict) else f"is a JSON {type(value).__name__}"
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            value, error = None, f"is not valid JSON ({type(exc).__name__}: {exc})"
        if error is not None and index == 0:
            raise UnusableInputError(
                f"`{path}` is neither an Avro container file nor JSON Lines: "
                f"line {line_number} {error}."
            )
        if error is not None:
            yield FileRecord(
                file=str(path),
                index=index,
                value=None,
                error=f"line {line_number} {error}, not a JSON object",
            )
        else:
            yield FileRecord(file=str(path), index=index, value=value)
        index += 1
        if position is not None:
            position[0] = handle.tell()


def write_avro(path: Path, schema: dict[str, Any], records: Iterable[Any]) -> int:
    """Writes an Avro object container file (deflate); returns the number of records."""
    counted = _Counter(records)
    with path.open("wb") as handle:
        fastavro.writer(handle, schema, counted, codec="deflate")
    return counted.count


def write_json_lines(path: Path, records: Iterable[Any]) -> int:
    """Writes plain JSON Lines (unions as plain values, timestamps as ISO-8601)."""
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, default=json_default))
            handle.write("\n")
            count += 1
    return count


def json_default(value: Any) -> Any:
    """Avro values JSON has no type for: times and dates as ISO-8601, bytes as hex, decimals
    and UUIDs as text."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, Decimal | UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _Counter:
    def __init__(self, items: Iterable[Any]) -> None:
        self._items = items
        self.count = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self._items:
            self.count += 1
            yield item
