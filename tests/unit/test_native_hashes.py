"""The native extension's per-row hashes against their Python definitions, on hostile input:
the received digests, the SQLite store's record keys and the Merkle roots must be the same
bytes whichever side computes them (chains written by either verify with the other)."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_guard.lineage import hashes
from lineage_guard.lineage.hops import (
    merkle_nodes,
    merkle_root,
    merkle_root_of,
    reference_merkle_nodes,
)

native = hashes.native()
needs_native = pytest.mark.skipif(native is None, reason="the native extension is not built")

# Every code point, lone surrogates included (record ids from files can hold them).
texts = st.text(alphabet=st.characters(codec=None), max_size=40)
blobs = st.binary(max_size=300)


def reference_root(leaves: list[bytes]) -> str:
    if not leaves:
        return hashlib.sha256(b"").hexdigest()
    return merkle_root_of(reference_merkle_nodes(leaves, 0))


@needs_native
@settings(max_examples=300, deadline=None)
@given(st.lists(blobs, max_size=70))
def test_merkle_roots_are_the_reference_roots(leaves: list[bytes]) -> None:
    assert merkle_root(leaves) == reference_root(leaves)


@needs_native
@settings(max_examples=200, deadline=None)
@given(st.lists(blobs, max_size=70), st.integers(0, 7))
def test_merkle_nodes_are_the_reference_nodes(leaves: list[bytes], height: int) -> None:
    assert merkle_nodes(leaves, height) == reference_merkle_nodes(leaves, height)


@needs_native
def test_merkle_roots_of_every_size_up_to_two_blocks() -> None:
    # Odd nodes carried up at every level: sizes 0..130 cover 1, 2 and 3 carries.
    leaves = [bytes([i % 256]) * (i % 7) for i in range(130)]
    for n in range(131):
        assert merkle_root(leaves[:n]) == reference_root(leaves[:n]), n


@needs_native
@settings(max_examples=300, deadline=None)
@given(st.lists(texts, max_size=50))
def test_record_keys_are_the_reference_keys(ids: list[str]) -> None:
    assert hashes.record_keys(ids) == [hashes.record_key(i) for i in ids]


@needs_native
def test_an_id_with_a_lone_surrogate_is_keyed_like_the_reference() -> None:
    ids = ["plain", "\udc80tail", "é"]
    assert hashes.record_keys(ids) == [hashes.record_key(i) for i in ids]
    with pytest.raises(UnicodeEncodeError):
        native.record_keys(ids)  # the native side refuses it; the Python side keys it


@needs_native
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), blobs), max_size=50), st.integers(0, 5))
def test_received_digests_are_hashlibs(values: list[bytes | None], start: int) -> None:
    column = pa.array([b"x"] * start + values, pa.binary()).slice(start)  # offset ≠ 0 too
    assert hashes.sha256_hex_each(column) == [hashlib.sha256(v or b"").hexdigest() for v in values]


def test_the_python_side_alone_gives_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    ids, leaves = ["a", "\udc80", ""], [b"", b"x", b"yz"]
    values = pa.array([b"", None, b"\x00\xff"], pa.binary())
    fast = (hashes.record_keys(ids), merkle_root(leaves), hashes.sha256_hex_each(values))
    monkeypatch.setattr(hashes, "native", lambda: None)
    import lineage_guard.lineage.hops as hops

    monkeypatch.setattr(hops, "native", lambda: None)
    assert (hashes.record_keys(ids), merkle_root(leaves), hashes.sha256_hex_each(values)) == fast
    assert fast[1] == reference_root(leaves)
