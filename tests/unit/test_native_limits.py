"""Lengths a message declares do not make the native reader allocate them.

apache-avro allocates what a string's length or an array block's count declares before it
reads a byte of it. A 31-byte single-object body declaring a 500,000,000-byte `record_id`
took ~500 MB; a Contact declaring 536,870,912 parent ids asked for ~30 GB and aborted the
process (`rust_oom`) under an address-space limit: one gateway request, or one Kafka message,
killed the guard. The reader now refuses declarations past `MAX_DECLARED` (`native/src/lib.rs`)
and fastavro reads those bodies, as it reads every body the reader refuses. Each case runs in
a child process under a 6 GiB address-space limit, so an abort fails the test instead of
ending the test run."""

from __future__ import annotations

import textwrap

import pytest

from lineage_guard.io import arrow_decode
from tests.child import run_scenario

SCENARIO = textwrap.dedent(
    """
    import copy, resource

    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    from lineage_guard import arrow_batch, guard_chain
    from lineage_guard.generate import CONTACT, generate
    from lineage_guard.io.decode import Decoder, encode_single_object
    from lineage_guard.web import bodies


    def varint(n):
        n = (n << 1) ^ (n >> 63)
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)


    made = next(iter(generate(1, seed=3, entities=(CONTACT,))))
    record = copy.deepcopy(made.record)
    record["provenance"]["parent_record_ids"] = ["x"]
    message = encode_single_object(record, made.schema)
    assert message.count(b"\\x02\\x02x\\x00") == 1
    string_bomb = message[:10] + varint(500_000_000) + b"abc"
    array_bomb = message.replace(b"\\x02\\x02x\\x00", varint(536_870_912) + b"\\x02x\\x00")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for body in (string_bomb, array_bomb, message + array_bomb):
        try:
            bodies.split_single_objects(body)
            raise AssertionError("split")
        except bodies.MalformedBodyError as exc:
            assert "does not decode" in str(exc), exc
    batch = arrow_batch.from_messages("t", 0, [0, 1, 2], [string_bomb, array_bomb, message])
    decoded = guard_chain.decode(batch, Decoder())
    assert decoded.column("stopped_at").to_pylist() == ["decode", "decode", None]
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
    print(f"refused, {grown} MiB")
    """
)


@pytest.mark.skipif(not arrow_decode.available(), reason="the Rust reader is not built")
def test_declared_lengths_are_not_allocated() -> None:
    done = run_scenario(SCENARIO)
    assert done.returncode == 0, done.stderr[-3000:]
    words, grown = done.stdout.split()[0], int(done.stdout.split()[1])
    assert words == "refused," and grown < 100, done.stdout
