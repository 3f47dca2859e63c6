"""Streams records out of Avro object container files and JSON Lines files.

Nothing is loaded whole: records are yielded one at a time with their file and 0-based index,
so a 2 GB file costs the memory of one Avro block or one line. A file that cannot be read at
all (missing, corrupt header or block, a block whose record count does not match its bytes,
a codec whose library is missing, not JSON Lines) raises `UnusableInputError`; a single
JSON line that is not a JSON object, or longer than `MAX_LINE_BYTES`, is a bad *record* and
is yielded with its `error`. A FIFO, a pipe or `/dev/stdin` is read as it streams by (its first
bytes, read to tell Avro from JSON Lines, are replayed), once.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import fastavro
from fastavro.read import BLOCK_READERS

from lineage_guard.io.avro import lenient
from lineage_guard.lineage.errors import UnusableInputError

AVRO_MAGIC = b"Obj\x01"
# The codecs the Avro specification defines; fastavro reads each (with cramjam for snappy and
# backports.zstd for zstandard, both dependencies of lineage-guard).
AVRO_CODECS = ("null", "deflate", "bzip2", "snappy", "xz", "zstandard")
# The longest JSON Lines line read: a longer one is a bad record (its bytes are skipped, never
# held whole), so one endless line cannot take the memory of the run or the CI job.
MAX_LINE_BYTES = 16 * 1024 * 1024


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
        raw = path.open("rb", buffering=0)
    except OSError as exc:
        raise UnusableInputError(f"Cannot read `{path}`: {exc.strerror or exc}.") from exc
    with raw:
        head, handle = _with_head(raw)
        if head == AVRO_MAGIC:
            yield from _avro(path, handle, position)
        else:
            yield from _json_lines(path, handle, position)


def _with_head(raw: io.RawIOBase) -> tuple[bytes, io.BufferedReader]:
    """The stream's first bytes (to tell its format) and the whole stream, from its start."""
    if raw.seekable():
        head = raw.read(len(AVRO_MAGIC)) or b""
        raw.seek(0)
        return head, io.BufferedReader(raw)
    head = b""
    while len(head) < len(AVRO_MAGIC):  # a pipe may hand out fewer bytes than asked for
        chunk = raw.read(len(AVRO_MAGIC) - len(head))
        if not chunk:
            break
        head += chunk
    return head, io.BufferedReader(_Replayed(head, raw))


class _Replayed(io.RawIOBase):
    """A stream that cannot seek (FIFO, pipe, `/dev/stdin`) with its first bytes, already read,
    put back in front; `tell` counts the bytes read, for progress."""

    def __init__(self, head: bytes, rest: io.RawIOBase) -> None:
        super().__init__()
        self._head, self._rest, self._offset = head, rest, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
        else:
            n = self._rest.readinto(buffer) or 0
        self._offset += n
        return n

    def tell(self) -> int:
        return self._offset


def _avro(path: Path, handle: IO[bytes], position: list[int] | None) -> Iterator[FileRecord]:
    """Every record of an Avro container file, block by block.

    Each block's record count is checked against its bytes: a negative count, or one that
    does not match what the block holds, makes the file unusable (never a silent skip), so
    the records yielded always add up to the records in the file. Values are read with
    lenient logical types (`io.avro`): one record's year-10000 timestamp reaches the contract
    as a raw value instead of ending the file.
    """
    index = 0
    header_read = False
    try:
        blocks = fastavro.block_reader(handle)
        header_read = True
        codec = blocks.codec
        if codec not in BLOCK_READERS:
            raise UnusableInputError(
                f"Cannot decode Avro file `{path}`: it uses the codec `{codec}`, which is not "
                f"one that Avro defines ({', '.join(AVRO_CODECS)})."
            )
        schema = lenient(blocks.writer_schema)
        for number, block in enumerate(_blocks(path, blocks, codec), start=1):
            data, count = block.bytes_, block.num_records
            size = len(data.getbuffer())
            if count < 0:
                raise UnusableInputError(
                    f"Cannot decode Avro file `{path}`: block {number} (at byte {block.offset}) "
                    f"has the impossible record count {count}. The file is corrupt."
                )
            for read in range(count):
                if data.tell() >= size:
                    raise UnusableInputError(
                        f"Cannot decode Avro file `{path}`: block {number} (at byte "
                        f"{block.offset}) claims {count} records but holds only {read}. "
                        "The file is corrupt."
                    )
                value = fastavro.schemaless_reader(data, schema, None)
                yield FileRecord(file=str(path), index=index, value=value)
                index += 1
            if data.tell() != size:
                raise UnusableInputError(
                    f"Cannot decode Avro file `{path}`: block {number} (at byte {block.offset}) "
                    f"claims {count} records but holds {size - data.tell()} more bytes after "
                    "them. The file is corrupt."
                )
            if position is not None:
                position[0] = handle.tell()
    except UnusableInputError:
        raise
    except Exception as exc:  # fastavro raises ValueError, EOFError, SchemaResolutionError, …
        where = (
            "its header"
            if not header_read
            else ("its first block" if index == 0 else f"after record {index - 1}")
        )
        raise UnusableInputError(
            f"Cannot decode Avro file `{path}` at {where}: "
            f"{str(exc).rstrip('.?! ') or type(exc).__name__}. "
            "The file is corrupt or truncated."
        ) from exc


def read_avro_stream(name: Path, handle: IO[bytes]) -> Iterator[FileRecord]:
    """Every record of an Avro container file read from `handle` (e.g. a request body), as
    `read_records` reads a file; `name` names it in errors."""
    return _avro(name, handle, None)


def _blocks(path: Path, blocks: Iterable[Any], codec: str) -> Iterator[Any]:
    """The file's blocks; a codec whose library is missing is said so, not called corrupt."""
    iterator = iter(blocks)
    while True:
        try:
            block = next(iterator)
        except StopIteration:
            return
        except ValueError as exc:
            if "need to install" in str(exc):  # fastavro's words for a missing codec library
                raise UnusableInputError(
                    f"Cannot decode Avro file `{path}`: its codec `{codec}` needs a library "
                    f"that is not installed ({exc}). Install it, or re-write the file with "
                    "another codec."
                ) from exc
            raise
        yield block


def _json_lines(path: Path, handle: IO[bytes], position: list[int] | None) -> Iterator[FileRecord]:
    index = 0
    line_number = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        line_number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            _skip_line(handle)
            too_long = f"line {line_number} is longer than {MAX_LINE_BYTES} bytes: not read"
            yield FileRecord(file=str(path), index=index, value=None, error=too_long)
            index += 1
            if position is not None:
                position[0] = handle.tell()
            continue
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


def _skip_line(handle: IO[bytes]) -> None:
    """Reads past the rest of the current line, a MiB at a time, holding none of it."""
    while chunk := handle.readline(1 << 20):
        if chunk.endswith(b"\n"):
            return


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
