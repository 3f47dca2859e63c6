"""Request bodies of the gateway (`web.gateway`): records in, as a `GuardBatch`, by Content-Type.

=============================================  ===========================================
Content-Type                                   body
=============================================  ===========================================
``application/json``                           one JSON object, or a JSON array of objects
``application/x-ndjson``, ``application/jsonl``  JSON Lines: one object per line
``application/vnd.apache.avro.single-object``  Avro single-object encoded messages, back to
                                               back (each its own writer schema from
                                               `schemas/`, found by its fingerprint)
``application/vnd.apache.avro.container``,     an Avro object container file
``avro/binary``
=============================================  ===========================================

JSON records are read as `lineage-guard validate` reads JSON Lines (unions as plain values,
timestamps as ISO-8601 or epoch millis) and enter the chain as records
(`arrow_batch.from_records`); single-object messages enter as message bytes
(`arrow_batch.from_messages`), decoded by the chain's own `decode`, as the Kafka guard decodes
them. A body that cannot be split into records is refused whole, naming the line or the byte
offset where it broke: nothing of it is judged.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from lineage_guard.arrow_batch import GuardBatch, from_messages, from_records
from lineage_guard.io import arrow_decode
from lineage_guard.io.avro import lenient
from lineage_guard.io.decode import SINGLE_OBJECT_MAGIC, known_fingerprints
from lineage_guard.io.files import read_avro_stream
from lineage_guard.lineage.errors import UnusableInputError

JSON = "application/json"
JSON_LINES = ("application/x-ndjson", "application/jsonl", "application/json-lines")
SINGLE_OBJECT = "application/vnd.apache.avro.single-object"
CONTAINER = ("application/vnd.apache.avro.container", "avro/binary")
MEDIA_TYPES = (JSON, *JSON_LINES, SINGLE_OBJECT, *CONTAINER)


class MalformedBodyError(UnusableInputError):
    """A body that cannot be split into records (HTTP 400)."""


class UnsupportedMediaTypeError(UnusableInputError):
    """A Content-Type the gateway does not read (HTTP 415)."""

    http_status = 415


class BodyTooLargeError(UnusableInputError):
    """A body past the size limit, or with more records than the limit (HTTP 413)."""

    http_status = 413


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_records: int = 10_000


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header (parameters and case dropped); refused with
    `UnsupportedMediaTypeError` when the gateway cannot read it."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind not in MEDIA_TYPES:
        raise UnsupportedMediaTypeError(
            f"Cannot read a body of type `{kind or 'none'}`: send one of "
            + ", ".join(f"`{m}`" for m in MEDIA_TYPES)
            + "."
        )
    return kind


def parse(body: bytes, content_type: str | None, *, source: str, limits: Limits) -> GuardBatch:
    """The body's records (or messages) as one batch of the partition `source`/0, at
    positions 0, 1, … in input order."""
    kind = media_type(content_type)
    if len(body) > limits.max_body_bytes:
        raise too_large(limits)
    if kind == SINGLE_OBJECT:
        messages = split_single_objects(body)
        _count(len(messages), limits)
        return from_messages(source, 0, range(len(messages)), messages)
    if kind in CONTAINER:
        records = _container(body, limits)
    elif kind == JSON:
        records = _json(body)
    else:
        records = _json_lines(body)
    _count(len(records), limits)
    return from_records(source, 0, records)


def too_large(limits: Limits) -> BodyTooLargeError:
    return BodyTooLargeError(
        f"The body is larger than {limits.max_body_bytes} bytes: send fewer records per request."
    )


def _count(n: int, limits: Limits) -> None:
    if n > limits.max_records:
        raise BodyTooLargeError(
            f"The body holds {n} records, more than {limits.max_records}: send them in "
            "several requests."
        )
    if n == 0:
        raise MalformedBodyError("The body holds no record: send at least one.")


def _loads(data: bytes, where: str, *, one_line: bool = False) -> Any:
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        at = f"column {exc.colno}" if one_line else f"line {exc.lineno} column {exc.colno}"
        raise MalformedBodyError(f"{where} is not valid JSON: {exc.msg} at {at}.") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise MalformedBodyError(f"{where} is not valid JSON ({type(exc).__name__}).") from None


def _json(body: bytes) -> list[dict[str, Any]]:
    value = _loads(body, "The body")
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise MalformedBodyError(
            f"The body is a JSON {type(value).__name__}: send one JSON object or an array of them."
        )
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise MalformedBodyError(
                f"Element {index} of the body's array is a JSON {type(item).__name__}, "
                "not an object: send records as JSON objects."
            )
    return value


def _json_lines(body: bytes) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        value = _loads(line, f"Line {number} of the body", one_line=True)
        if not isinstance(value, dict):
            raise MalformedBodyError(
                f"Line {number} of the body is a JSON {type(value).__name__}, not an object:"
                " send one record object per line."
            )
        records.append(value)
    return records


def _container(body: bytes, limits: Limits) -> list[Any]:
    """The file's records; reading stops one past the limit, so a file of a million small
    records is refused without reading them all."""
    records = []
    try:
        for record in read_avro_stream(Path("the request body"), io.BytesIO(body)):
            records.append(record.value)
            if len(records) > limits.max_records:
                break
    except UnusableInputError as exc:
        raise MalformedBodyError(exc.message) from None
    return records


def split_single_objects(body: bytes) -> list[bytes]:
    """The single-object messages of `body`, each as its bytes. A message is as long as its
    writer schema reads, so a fingerprint that names no schema of `schemas/`, or a body that
    ends inside a message, makes the rest unreadable: refused, naming the byte offset.

    The Rust reader splits what it can read (`arrow_decode.single_object_ends`); fastavro
    reads from the first message it could not, for that message's length or its reason, so
    the messages and the errors are fastavro's (`tests/unit/test_gateway_bodies.py` holds
    the two to each other on mutated bodies). fastavro alone took a third of the gateway's
    chain thread on 1,000-record bodies."""
    messages: list[bytes] = []
    stream = io.BytesIO(body)
    split = arrow_decode.single_object_ends(body, known_fingerprints())
    if split is not None:  # the Rust reader's split; fastavro goes on where it stopped
        ends, stopped = split
        starts = [0, *ends]
        messages = [body[start:end] for start, end in zip(starts, ends, strict=False)]
        stream.seek(stopped)
    while (start := stream.tell()) < len(body):
        head = stream.read(10)
        if len(head) < 10 or head[:2] != SINGLE_OBJECT_MAGIC:
            raise MalformedBodyError(
                f"No Avro single-object message starts at byte {start} of the body (message "
                f"{len(messages)}): each must begin with `C3 01` and an 8-byte fingerprint."
            )
        name = known_fingerprints().get(head[2:10])
        if name is None:
            raise MalformedBodyError(
                f"The message at byte {start} of the body (message {len(messages)}) has the "
                f"schema fingerprint `{head[2:10].hex()}`, which is none of the schemas in "
                "`schemas/`: its end cannot be found."
            )
        try:
            fastavro.schemaless_reader(stream, _schema(name), None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeError, …
            raise MalformedBodyError(
                f"The message at byte {start} of the body (message {len(messages)}) does not "
                f"decode as `{name}`: {str(exc).rstrip('.') or type(exc).__name__}."
            ) from None
        messages.append(body[start : stream.tell()])
    return messages


_SCHEMAS: dict[str, Any] = {}


def _schema(name: str) -> Any:
    if name not in _SCHEMAS:
        from lineage_guard.contract.schemas import load_schema

        _SCHEMAS[name] = lenient(load_schema(name))
    return _SCHEMAS[name]


__all__: Sequence[str] = (
    "BodyTooLargeError",
    "Limits",
    "MalformedBodyError",
    "UnsupportedMediaTypeError",
    "parse",
)
