"""Decodes a micro-batch's Avro bodies straight into the contract's Arrow columns.

The columnar chain's decode (`guard_chain.decode`) finds each message's writer schema
(single-object fingerprint, or the `--schema` of raw bodies) and hands the batch to the Rust
reader (`lineage_guard._avro`, Apache Avro's Rust implementation: `native/`), which decodes
every body on its own and returns the columns the suites check, as Arrow buffers. No Python
object is made per record. A body the reader cannot decode, or whose values the columns
cannot carry exactly, is marked, and `guard_chain` reads that one message with fastavro, as
the per-record decoder always has: its reason, or its whole record.

Confluent-framed messages (a registry schema) are read by fastavro for now.

Without the compiled reader (a source install without Rust), `available()` is False and every
message is read by fastavro: the same verdicts, slower.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa

from lineage_guard.contract.schemas import load_schema

TEXT_COLUMNS = (
    "record_id",
    "tenant_id",
    "content_class",
    "origin_env",
    "source_system",
    "generator_name",
    "parameters_sha256",
    "disclosure",
    "digital_source_type",
)
FIELDS = (
    *(pa.field(name, pa.string()) for name in TEXT_COLUMNS),
    pa.field("provenance_present", pa.bool_()),
    pa.field("generated_at", pa.float64()),
    pa.field("parent_record_ids", pa.list_(pa.string())),
)
READ, FAILED, OTHER = 0, 1, 2  # a row's status
NOT_READ = 255  # a row's reader index: not to be read


def available() -> bool:
    return _reader() is not None


@cache
def _native() -> Any:
    try:
        from lineage_guard import _avro
    except ImportError:
        return None
    return _avro


def _reader() -> Any:
    native = _native()
    return native.read_contract if native is not None else None


def single_object_ends(body: bytes, schemas: dict[bytes, str]) -> tuple[list[int], int] | None:
    """Where each single-object message of `body` ends, read by the Rust reader with the
    schemas of the fingerprints in `schemas` (fingerprint → schema name): the ends of the
    messages it split, and the offset where it stopped (`len(body)` when it split them all,
    else the start of the first message it could not read to its end). None without the
    Rust reader."""
    native = _native()
    if native is None:
        return None
    names = list(schemas.values())
    ends, stopped = native.single_object_ends(
        [_plain_schema(name) for name in names], list(schemas), body
    )
    return np.frombuffer(ends, "<u8").tolist(), stopped


@dataclass(frozen=True, kw_only=True)
class ContractColumns:
    """The contract's columns of a group of bodies; rows whose `status` is not READ are null."""

    status: np.ndarray  # uint8 per row
    columns: dict[str, pa.Array]


def read_bodies(
    values: pa.BinaryArray, schema_names: Sequence[str], readers: np.ndarray, skips: np.ndarray
) -> ContractColumns:
    """Each of `values` minus its first `skips[i]` bytes, read with the schema
    `schema_names[readers[i]]`; a row whose `readers[i]` is `NOT_READ` is not read (status
    FAILED). Rows come out in the order of `values`."""
    read = _reader()
    assert read is not None, "the Rust reader is not installed: check `available()` first"
    if values.offset != 0 or values.type != pa.binary():
        values = pa.concat_arrays([values.cast(pa.binary())])  # offsets from 0
    _, offsets, data = values.buffers()
    n = len(values)
    status, texts, present, stamps, parents = read(
        [_plain_schema(name) for name in schema_names],
        data.to_pybytes() if data is not None else b"",
        offsets.to_pybytes()[: 4 * (n + 1)],
        np.ascontiguousarray(readers, np.uint8).tobytes(),
        np.ascontiguousarray(skips, np.uint8).tobytes(),
    )
    columns: dict[str, pa.Array] = {
        name: _strings(*parts) for name, parts in zip(TEXT_COLUMNS, texts, strict=True)
    }
    columns["provenance_present"] = pa.array(np.frombuffer(present, np.uint8).astype(bool))
    values_, valid, nulls = stamps
    columns["generated_at"] = pa.Array.from_buffers(
        pa.int64(), n, [pa.py_buffer(valid), pa.py_buffer(values_)], null_count=nulls
    ).cast(pa.float64(), safe=False)
    list_offsets, list_valid, list_nulls, child = parents
    ids = _strings(*child)
    columns["parent_record_ids"] = pa.Array.from_buffers(
        pa.list_(pa.string()),
        n,
        [pa.py_buffer(list_valid), pa.py_buffer(list_offsets)],
        null_count=list_nulls,
        children=[ids],
    )
    return ContractColumns(status=np.frombuffer(status, np.uint8), columns=columns)


def _strings(offsets: bytes, data: bytes, valid: bytes, nulls: int) -> pa.Array:
    n = len(offsets) // 4 - 1
    return pa.Array.from_buffers(
        pa.string(),
        n,
        [pa.py_buffer(valid), pa.py_buffer(offsets), pa.py_buffer(data)],
        null_count=nulls,
    )


@cache
def _plain_schema(schema_name: str) -> str:
    """The schema as JSON without logical types: values as Avro stores them."""
    return json.dumps(_plain(load_schema(schema_name)))


def _plain(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_plain(branch) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _plain(v) for k, v in schema.items() if not k.startswith("__")}
    out.pop("logicalType", None)
    return out
