"""Avro container files: every codec Avro defines, missing codec libraries, block counts that
do not add up, and legal values that Python's types cannot hold (`validate` and `run --input`).

Files here are written by fastavro; `tests/integration/test_avro_java_interop.py` has the same
checks on files written by Apache Avro's Java implementation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest

from lineage_guard.contract.schemas import load_schema
from lineage_guard.generate import CONTACT, Faults, faulty_sync_schema, generate
from lineage_guard.io.files import AVRO_CODECS, read_records
from lineage_guard.lineage.errors import UnusableInputError
from tests.cli import run_cli

YEAR_10000 = 253_402_300_800_000  # 10000-01-01T00:00:00Z: a legal Avro long, no Python datetime
BEFORE_YEAR_1 = -(2**62)


def contacts(count: int, seed: int, **faults: float) -> tuple[list[dict[str, Any]], set[int]]:
    generated = list(generate(count, seed=seed, entities=(CONTACT,), faults=Faults(**faults)))
    return [g.record for g in generated], {i for i, g in enumerate(generated) if g.fault}


def rejected(path: Path, *extra: str) -> tuple[int, dict[int, set[str]], dict[str, Any]]:
    result = run_cli("validate", path, "--format", "json", *extra)
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    return (
        result.returncode,
        {r["index"]: {v["rule"] for v in r["violations"]} for r in report["rejected"]},
        report,
    )


@pytest.mark.parametrize("codec", AVRO_CODECS)
def test_every_avro_codec_is_read_with_the_same_verdicts(tmp_path: Path, codec: str) -> None:
    records, bad = contacts(300, seed=7, stripped=0.1)
    path = tmp_path / f"contacts-{codec}.avro"
    with path.open("wb") as handle:
        fastavro.writer(
            handle, faulty_sync_schema(CONTACT), records, codec=codec, sync_interval=4096
        )
    assert fastavro.block_reader(path.open("rb")).codec == codec
    code, verdicts, report = rejected(path)
    assert code == 1
    assert report["total"] == 300
    assert set(verdicts) == bad and len(bad) > 10


def test_a_missing_codec_library_is_named_not_called_corrupt(tmp_path: Path) -> None:
    records, _ = contacts(20, seed=8)
    path = tmp_path / "snappy.avro"
    with path.open("wb") as handle:
        fastavro.writer(handle, load_schema(CONTACT), records, codec="snappy")
    # The real import failure: an import hook makes cramjam (and python-snappy) unimportable
    # in this process, as on a machine where they are not installed.
    blocked = (
        "import sys\n"
        "class Missing:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in ('cramjam', 'snappy'):\n"
        "            raise ImportError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, Missing())\n"
    )
    command = blocked + "from lineage_guard.cli.main import main\nmain()"
    result = subprocess.run(
        [sys.executable, "-c", command, "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "codec `snappy` needs a library that is not installed" in result.stderr
    assert "cramjam" in result.stderr
    assert "corrupt" not in result.stderr


def _file_with_generated_at(path: Path, values: dict[int, int]) -> list[dict[str, Any]]:
    records, _ = contacts(50, seed=9)
    for index, millis in values.items():
        records[index]["provenance"]["generated_at"] = millis  # fastavro writes the long as is
    with path.open("wb") as handle:
        fastavro.writer(handle, load_schema(CONTACT), records, codec="deflate")
    return records


def test_out_of_range_timestamps_reject_their_record_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "far.avro"
    records = _file_with_generated_at(path, {3: YEAR_10000, 17: 2**62, 30: BEFORE_YEAR_1})
    code, verdicts, report = rejected(path)
    assert code == 1
    assert report["total"] == 50
    assert verdicts == {
        3: {"generated_at_in_future"},
        17: {"generated_at_in_future"},
        30: {"wrong_type"},
    }
    messages = {r["index"]: r["violations"][0]["message"] for r in report["rejected"]}
    assert records[30]["record_id"] in messages[30]
    assert "provenance.generated_at" in messages[30]


def test_out_of_range_timestamps_in_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "far.avro"
    records = _file_with_generated_at(path, {3: YEAR_10000, 30: BEFORE_YEAR_1})
    out = tmp_path / "out"
    result = run_cli("run", "--input", path, "--output-dir", out, "--no-lineage")
    assert result.returncode == 0, result.stderr
    allowed = [json.loads(line) for line in (out / "far.allowed.jsonl").open()]
    stopped = [json.loads(line) for line in (out / "far.quarantine.jsonl").open()]
    assert len(allowed) == 48
    assert {e["record"]["record_id"]: {v["rule"] for v in e["violations"]} for e in stopped} == {
        records[3]["record_id"]: {"generated_at_in_future"},
        records[30]["record_id"]: {"wrong_type"},
    }
    # The raw long is kept (lossless), where an in-range timestamp is ISO-8601.
    far = next(e for e in stopped if e["record"]["record_id"] == records[3]["record_id"])
    assert far["record"]["provenance"]["generated_at"] == YEAR_10000
    in_range = [r["provenance"]["generated_at"] for r in allowed if r["provenance"]["generated_at"]]
    assert in_range and all(t.endswith("+00:00") for t in in_range)


def test_huge_epoch_millis_in_json_lines_are_a_record_error(tmp_path: Path) -> None:
    records, _ = contacts(3, seed=10)
    path = tmp_path / "huge.jsonl"
    lines = [json.dumps(r, default=str) for r in records]
    lines[1] = lines[1].replace(
        json.dumps(str(records[1]["provenance"]["generated_at"])), "1" + "0" * 400
    )
    path.write_text("\n".join(lines) + "\n")
    code, verdicts, _ = rejected(path)
    assert code == 1
    assert verdicts == {1: {"wrong_type"}}


def _four_blocks(path: Path, codec: str) -> list[int]:
    """100 contacts in 4 blocks of 25; returns each block's byte offset."""
    records, _ = contacts(100, seed=11)
    schema = load_schema(CONTACT)
    with path.open("wb") as handle:
        fastavro.writer(handle, schema, records[:25], codec=codec)
    for start in (25, 50, 75):  # each append writes one more block
        with path.open("a+b") as handle:
            fastavro.writer(handle, schema, records[start : start + 25], codec=codec)
    offsets = [block.offset for block in fastavro.block_reader(path.open("rb"))]
    assert [b.num_records for b in fastavro.block_reader(path.open("rb"))] == [25] * 4
    return offsets


def _patch_count(path: Path, offset: int, count: int) -> None:
    data = bytearray(path.read_bytes())
    assert data[offset] == 50  # 25, zig-zag encoded, one byte
    zigzag = (count << 1) ^ (count >> 63)
    assert zigzag < 0x80
    data[offset] = zigzag
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("count", "says"),
    [
        (-1, "impossible record count -1"),
        (0, "claims 0 records but holds"),
        (24, "claims 24 records but holds"),
        (26, "claims 26 records but holds only 25"),
    ],
)
@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_a_block_count_that_does_not_add_up_makes_the_file_unusable(
    tmp_path: Path, count: int, says: str, codec: str
) -> None:
    path = tmp_path / "patched.avro"
    offsets = _four_blocks(path, codec)
    assert sum(1 for _ in read_records(path)) == 100
    _patch_count(path, offsets[1], count)
    with pytest.raises(UnusableInputError, match="block 2 "):
        list(read_records(path))
    for args in (["validate", path], ["run", "--input", path, "--output-dir", tmp_path / "out"]):
        result = run_cli(*args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert says in result.stderr and f"at byte {offsets[1]}" in result.stderr
