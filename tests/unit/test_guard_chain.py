"""The columnar guard chain (`guard_chain`) against the per-record stages (`stages`): the same
verdicts, messages, hop rows, Merkle leaves and roots, on hostile batches."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_guard import arrow_batch, guard_chain
from lineage_guard.contract.policies import parse_policy
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.generate import Faults, generate
from lineage_guard.io.decode import Decoder, encode_single_object
from lineage_guard.items import Batch, Item, Source
from lineage_guard.lineage.hops import merkle_root
from lineage_guard.stages import index_keys
from tests import reference_chain as stages
from tests.unit.test_compiled_suite import (
    IPTC,
    NOW_MS,
    _iptc_uris,
    clean_batches,
    dirty_batches,
)

POLICIES = ("production", "tenant:acme")
# Digital source types for the messages: every IPTC URI the contract knows (some agree with
# the record's class, some contradict it), bogus ones, and none.
SOURCE_TYPES = [
    None,
    *_iptc_uris(),
    IPTC.replace("http:", "https:") + "digitalCapture",
    IPTC + "aiGenerated",
    "trainedAlgorithmicMedia",
    "",
]


def _damage(rng: random.Random, value: bytes) -> bytes:
    """A message the decoder must stop, each with another reason."""
    kind = rng.randrange(7)
    if kind == 0:
        return value[: rng.randrange(10, len(value))]  # truncated body
    if kind == 1:
        return value + b"\x00\x02"  # trailing bytes
    if kind == 2:
        return b"\xc3\x01" + bytes(8) + value[10:]  # unknown fingerprint
    if kind == 3:
        return b""  # empty value
    if kind == 4:
        return value[:10] + b"\x48" + b"\xff" * 36 + value[47:]  # bad UTF-8 in record_id
    if kind == 5:
        return value[:10] + b"\x01" + value[11:]  # negative string length
    return b"no framing at all"


def _messages(count: int, seed: int) -> list[bytes | None]:
    rng = random.Random(seed)
    faults = Faults(stripped=0.1, test_origin=0.1, other_tenant=0.05)
    values: list[bytes | None] = []
    for generated in generate(count, seed=seed, faults=faults):
        if generated.record["provenance"] is None:  # the contract schema cannot carry a null
            generated.record["provenance"] = {
                "content_class": "SYNTHETIC",
                "origin_env": "PRODUCTION",
                "source_system": "crm-sync",
                "generator": None,
                "generated_at": None,
                "disclosure": None,
                "parent_record_ids": [],
                "digital_source_type": None,
            }
        provenance = generated.record["provenance"]
        if rng.random() < 0.3:  # written before `digital_source_type` (provenance version 1)
            provenance.pop("digital_source_type", None)
            value = encode_single_object(generated.record, f"{generated.schema}@1")
        else:
            provenance["digital_source_type"] = rng.choice(SOURCE_TYPES)
            value = encode_single_object(generated.record, generated.schema)
        if rng.random() < 0.08:
            value = _damage(rng, value)
        values.append(value)
    values[rng.randrange(count)] = None  # a tombstone
    return values


@pytest.fixture(scope="module")
def validator() -> SuiteValidator:
    return SuiteValidator(clock=lambda: NOW_MS)


def _by_stages(
    batch: Batch, validator: SuiteValidator, policies: tuple[str, ...], decoder: Decoder | None
) -> tuple[Batch, stages.HopBatch]:
    if decoder is not None:
        batch = stages.decode(batch, decoder)
    batch = stages.validate(batch, validator)
    batch = stages.enforce(batch, [parse_policy(p) for p in policies])
    hops = stages.lineage_hops(
        batch, pipeline="p", run_id="r", allowed_to="out", quarantined_to="q", at=_AT
    )
    return batch, hops


def _by_chain(
    gb: arrow_batch.GuardBatch,
    validator: SuiteValidator,
    policies: tuple[str, ...],
    decoder: Decoder | None,
) -> tuple[arrow_batch.GuardBatch, guard_chain.HopRows]:
    if decoder is not None:
        gb = guard_chain.decode(gb, decoder)
    gb = guard_chain.validate(gb, validator)
    gb = guard_chain.enforce(gb, [parse_policy(p) for p in policies])
    return gb, guard_chain.hop_rows(gb)


from datetime import UTC, datetime  # noqa: E402

_AT = datetime(2026, 12, 1, tzinfo=UTC)


def _assert_same(
    expected: Batch,
    hops: Any,
    gb: arrow_batch.GuardBatch,
    rows: Any,
    decoder: Decoder | None = None,
) -> None:
    got = guard_chain.with_records(gb).items()
    assert len(got.items) == len(expected.items)
    for want, have in zip(expected.items, got.items, strict=True):
        assert (have.stopped_at, have.blocked, have.violations) == (
            want.stopped_at,
            want.blocked,
            want.violations,
        ), want.source.offset
        assert have.record == want.record
    leaves = [hop.canonical() for hop in hops.hops]
    assert rows.leaves() == leaves
    assert rows.hops() == hops.hops
    assert rows.root() == hops.root() == merkle_root(leaves)


def test_hostile_messages_get_the_same_verdicts_hops_and_roots(validator: SuiteValidator) -> None:
    decoder = Decoder()
    values = _messages(3000, seed=11)
    offsets = list(range(1000, 1000 + len(values)))
    items = tuple(
        Item(source=Source(topic="t", partition=2, offset=o, value=v))
        for o, v in zip(offsets, values, strict=True)
    )
    counted: dict[str, int] = {}
    rules: set[str] = set()
    old_schema = read_in_rust = 0  # messages of provenance version 1; rows the Rust reader read
    for start in range(0, len(items), 500):
        part = Batch(topic="t", partition=2, items=items[start : start + 500])
        expected, hops = _by_stages(part, validator, POLICIES, decoder)
        gb = arrow_batch.from_messages(
            "t", 2, offsets[start : start + 500], values[start : start + 500]
        )
        gb, rows = _by_chain(gb, validator, POLICIES, decoder)
        _assert_same(expected, hops, gb, rows)
        read_in_rust += sum(gb.column("read").to_pylist()) if gb.has("read") else 0
        for item in expected.items:
            key = str(item.stopped_at)
            counted[key] = counted.get(key, 0) + 1
            rules.update(v.rule for v in item.violations)
            old_schema += (item.schema or "").endswith("@1")
    # The batches hold every kind of outcome, or the comparison proves little.
    assert set(counted) == {"None", "decode", "validate", "enforce"}, counted
    assert min(counted.values()) >= 50, counted
    assert {
        "digital_source_type_unknown",
        "digital_source_type_generated_but_human",
        "digital_source_type_captured_but_synthetic",
    } <= set(rules), rules
    assert old_schema >= 500 and read_in_rust >= 2000, (old_schema, read_in_rust)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    records=st.one_of(clean_batches, dirty_batches()),
    policies=st.sampled_from(
        [
            ("production",),
            ("tenant:acme",),
            ("production", "tenant:acme"),
            ("training",),
            ("production", "training:real"),
            ("training:mixed",),
        ]
    ),
)
def test_records_from_files_get_the_same_verdicts_and_hops(
    validator: SuiteValidator, records: list[Any], policies: tuple[str, ...]
) -> None:
    items = tuple(
        Item(source=Source(topic="f.jsonl", partition=0, offset=i), record=r)
        for i, r in enumerate(records)
    )
    batch = Batch(topic="f.jsonl", partition=0, items=items)
    expected, hops = _by_stages(batch, validator, policies, None)
    gb = arrow_batch.from_items(batch)
    gb, rows = _by_chain(gb, validator, policies, None)
    _assert_same(expected, hops, gb, rows)


def test_the_items_view_round_trips(validator: SuiteValidator) -> None:
    values = _messages(300, seed=5)
    gb = arrow_batch.from_messages("t", 0, list(range(len(values))), values)
    gb = guard_chain.enforce(
        guard_chain.validate(guard_chain.decode(gb, Decoder()), validator),
        [parse_policy("production")],
    )
    gb = guard_chain.with_records(gb)  # the items view carries records
    again = arrow_batch.from_items(gb.items())
    assert again.items() == gb.items()
    stopped = [i for i, stage in enumerate(gb.stopped_at()) if stage is not None]
    rows = [*reversed(stopped[:5]), 0]  # any rows, in the order asked for
    assert len(stopped) >= 5 and gb.items_at(rows) == [gb.items().items[i] for i in rows]
    assert guard_chain.hop_rows(again).leaves() == guard_chain.hop_rows(gb).leaves()


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_mutated_bodies_get_the_same_verdicts_as_fastavro(
    validator: SuiteValidator, seed: int
) -> None:
    """Random byte flips, cuts and insertions in valid bodies: a body the Rust reader reads
    must be one fastavro reads to the same verdict; rows out = messages in."""
    rng = random.Random(seed)
    values = _messages(200, seed=seed % 1000)
    for i, value in enumerate(values):
        if value is None or rng.random() < 0.5 or len(value) < 12:
            continue
        body = bytearray(value)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(10, len(body))
            kind = rng.randrange(3)
            if kind == 0:
                body[at] = rng.randrange(256)
            elif kind == 1:
                del body[at:]
            else:
                body[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
            if len(body) <= 10:
                break
        values[i] = bytes(body)
    offsets = list(range(len(values)))
    items = tuple(
        Item(source=Source(topic="t", partition=0, offset=o, value=v))
        for o, v in zip(offsets, values, strict=True)
    )
    decoder = Decoder()
    expected, hops = _by_stages(
        Batch(topic="t", partition=0, items=items), validator, POLICIES, decoder
    )
    gb, rows = _by_chain(
        arrow_batch.from_messages("t", 0, offsets, values), validator, POLICIES, decoder
    )
    assert len(gb) == len(values)
    _assert_same(expected, hops, gb, rows)


def test_the_rust_reader_is_built_where_required() -> None:
    """CI builds the package with cargo and requires the Rust reader (`.ci/run` sets
    `LINEAGE_GUARD_REQUIRE_NATIVE=1`); elsewhere the chain falls back to fastavro."""
    import os

    from lineage_guard.io import arrow_decode

    if os.environ.get("LINEAGE_GUARD_REQUIRE_NATIVE") != "1":
        pytest.skip("LINEAGE_GUARD_REQUIRE_NATIVE is not set: the fallback is allowed here")
    assert arrow_decode.available()


def test_the_chain_reads_known_bodies_in_rust() -> None:
    """Clean single-object messages are read into columns, not into records."""
    from lineage_guard.io import arrow_decode

    if not arrow_decode.available():
        pytest.skip("the Rust reader is not built (a source install without cargo)")
    values = [v for v in _messages(300, seed=3) if v is not None]
    gb = guard_chain.decode(
        arrow_batch.from_messages("t", 0, range(len(values)), values), Decoder()
    )
    read = gb.column("read").to_pylist()
    decodable = [Decoder().decode(v).__class__.__name__ == "Decoded" for v in values]
    assert read == decodable  # every decodable message of a known schema, and no other
    assert sum(read) > 250


def test_one_read_of_a_mixed_batch_equals_a_read_of_each_body() -> None:
    """The Rust reader reads a micro-batch of several writer schemas (and rows it is told
    not to read) in one call, in the batch's order: each row as a call for that body alone
    reads it, column by column."""
    import numpy as np
    import pyarrow as pa

    from lineage_guard.io import arrow_decode
    from lineage_guard.io.decode import known_fingerprints

    if not arrow_decode.available():
        pytest.skip("the Rust reader is not built (a source install without cargo)")
    values = [v for v in _messages(400, seed=11) if v is not None]
    names = sorted(
        {known_fingerprints()[v[2:10]] for v in values if v[2:10] in known_fingerprints()}
    )
    assert len(names) >= 4  # entity schemas, and an earlier provenance version among them
    readers = np.array(
        [names.index(known_fingerprints()[v[2:10]]) if v[2:10] in known_fingerprints()
         else arrow_decode.NOT_READ for v in values], dtype=np.uint8,
    )  # fmt: skip
    readers[::7] = arrow_decode.NOT_READ  # told not to read: status FAILED, null columns
    skips = np.full(len(values), 10, dtype=np.uint8)
    whole = arrow_decode.read_bodies(pa.array(values, pa.binary()), names, readers, skips)
    for i, value in enumerate(values):
        alone = arrow_decode.read_bodies(
            pa.array([value], pa.binary()), names, readers[i : i + 1], skips[i : i + 1]
        )
        assert whole.status[i] == alone.status[0], i
        for name, column in whole.columns.items():
            assert column[i].as_py() == alone.columns[name][0].as_py(), (i, name)
    assert (whole.status[::7] == arrow_decode.FAILED).all()
    assert (whole.status == arrow_decode.READ).sum() > 250


def test_parent_index_keys_equal_the_per_record_ones() -> None:
    """The run's parent index built from the columns holds exactly the keys the per-record
    head read gives (`stages.class_index`), for every decodable message."""
    decoder = Decoder()
    values = _messages(1000, seed=23)
    offsets = list(range(len(values)))
    items = tuple(
        Item(source=Source(topic="t", partition=0, offset=o, value=v))
        for o, v in zip(offsets, values, strict=True)
    )
    decoded = stages.decode(Batch(topic="t", partition=0, items=items), decoder)
    expected = index_keys(stages.class_index(decoded))
    gb = guard_chain.decode(arrow_batch.from_messages("t", 0, offsets, values), decoder)
    got = guard_chain.index_keys(gb)
    for want, have in zip(expected, got, strict=True):
        assert sorted(have[i : i + 16] for i in range(0, len(have), 16)) == sorted(
            want[i : i + 16] for i in range(0, len(want), 16)
        )
    assert len(expected[0]) > 16 * 50 and len(expected[1]) > 16 * 50


def test_long_values_are_bounded_as_the_per_record_hops_bound_them(
    validator: SuiteValidator,
) -> None:
    """A 10,000-character record id, tenant and parent id (`lineage.bounds`): the hop rows
    the Rust-read columns give equal the per-record ones, leaf for leaf."""
    records = [g for g in generate(40, seed=4) if g.record["provenance"] is not None]
    for n, generated in enumerate(records[:10]):
        generated.record["record_id"] = f"{n}" + "é" * 10_000
        generated.record["tenant_id"] = "t" * 300
        generated.record["provenance"]["parent_record_ids"] = ["p" * 5_000]
    values: list[bytes | None] = [encode_single_object(g.record, g.schema) for g in records]
    offsets = list(range(len(values)))
    items = tuple(
        Item(source=Source(topic="t" * 500, partition=0, offset=o, value=v))
        for o, v in zip(offsets, values, strict=True)
    )
    decoder = Decoder()
    expected, hops = _by_stages(
        Batch(topic="t" * 500, partition=0, items=items), validator, POLICIES, decoder
    )
    gb, rows = _by_chain(
        arrow_batch.from_messages("t" * 500, 0, offsets, values), validator, POLICIES, decoder
    )
    _assert_same(expected, hops, gb, rows)
    chained = guard_chain.hop_batch(
        gb, pipeline="p" * 300, run_id="r", allowed_to="out", quarantined_to="q", rows=rows
    )
    reference = stages.lineage_hops(
        expected, pipeline="p" * 300, run_id="r", allowed_to="out", quarantined_to="q"
    )
    assert (chained.pipeline, chained.source_topic) == (reference.pipeline, reference.source_topic)
    assert max(len(r or "") for r in rows.columns["record_id"]) == 138
