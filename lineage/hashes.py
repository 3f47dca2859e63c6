"""The lineage's per-row hashes, a whole micro-batch per call: the SHA-256 of each message as
received, the SQLite store's record keys (and, for `hops.merkle_root`, a batch's Merkle root).

They run in the native extension (`lineage_guard._avro`, `native/src/hashes.rs`) when it is
installed, and in Python's `hashlib` otherwise; both give the same bytes, and the Python
definitions here are the reference (`tests/unit/test_native_hashes.py` compares them on
hostile inputs). A batch the native side cannot take (an id with a lone surrogate, which has
no UTF-8) is hashed in Python.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa


@cache
def native() -> Any:
    """The native extension's hashes, or None (a source install without Rust)."""
    try:
        from lineage_guard import _avro
    except ImportError:
        return None
    return _avro if hasattr(_avro, "merkle_root") else None


def sha256_hex_each(values: pa.Array) -> list[str]:
    """The SHA-256 (hex) of each of `values` (binary; a null as no bytes)."""
    fast = native()
    if fast is None:
        return [hashlib.sha256(v or b"").hexdigest() for v in values.to_pylist()]
    if values.type != pa.binary() or values.offset != 0:
        values = pa.concat_arrays([values.cast(pa.binary())])  # offsets from 0
    values = values.fill_null(b"") if values.null_count else values
    _, offsets, data = values.buffers()
    n = len(values)
    text = fast.sha256_hex_each(
        data.to_pybytes() if data is not None else b"", offsets.to_pybytes()[: 4 * (n + 1)]
    )
    return [text[i : i + 64] for i in range(0, 64 * n, 64)]


def record_key(record_id: str) -> int:
    """The key under which the SQLite store's key levels keep the hops of `record_id`: the
    first 8 bytes of its SHA-256 as a signed 64-bit integer (ids that share a key are told
    apart by their text)."""
    digest = hashlib.sha256(record_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def record_keys(record_ids: Sequence[str]) -> list[int]:
    """`record_key` of each of `record_ids`."""
    fast = native()
    if fast is not None:
        try:
            keys = fast.record_keys(record_ids)
        except UnicodeEncodeError:
            pass
        else:
            return np.frombuffer(keys, dtype=np.int64).tolist()
    return [record_key(record_id) for record_id in record_ids]
