"""The library's Beam transforms: coder, tagged outputs, parents found wherever they were seen,
retries, and the plain-Python `Guard`."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners import pipeline_context
from apache_beam.testing.util import assert_that, equal_to

from lineage_guard import (
    GUARDED,
    QUARANTINE,
    Batch,
    BatchCoder,
    EnforcePolicies,
    Guard,
    GuardBatch,
    Item,
    Source,
    ValidateProvenance,
    Violation,
)
from lineage_guard.arrow_batch import from_items
from lineage_guard.io.file_io import FileSink, finalize_files
from lineage_guard.io.files import write_json_lines
from lineage_guard.recorder import LineageRecorder
from tests.cli import run_cli
from tests.unit.conftest import make_record, with_id

PARENT = "11111111-2222-4333-8444-555555555555"
CHILD = "22222222-2222-4333-8444-555555555555"
OTHER = "33333333-2222-4333-8444-555555555555"


def batch_of(*records: dict[str, Any], topic: str = "t", first: int = 0) -> GuardBatch:
    items = tuple(
        Item(source=Source(topic=topic, partition=0, offset=first + n), record=r)
        for n, r in enumerate(records)
    )
    return from_items(Batch(topic=topic, partition=0, items=items))


def test_batch_coder_is_deterministic_and_round_trips_every_value() -> None:
    coder = beam.coders.registry.get_coder(GuardBatch)
    assert isinstance(coder, BatchCoder)
    assert coder.is_deterministic()
    record = make_record("SYNTHETIC", parent_record_ids=[PARENT])
    record["extra"] = {
        "when": datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
        "amount": Decimal("12.50"),
        "id": uuid.UUID(PARENT),
        "huge": 2**80,
        "pair": (1, "two"),
        "raw": b"\x00\xff",
        "nothing": None,
        "flags": [True, 1.5, -3],
    }
    stopped = Item(
        source=Source(
            topic="crm",
            partition=3,
            offset=41,
            key=b"k",
            value=b"v",
            headers=[("h", b"1"), ("n", None)],
            timestamp_ms=1764000000000,
        ),
        record=record,
        schema="lineage_guard.crm.EmailActivity",
        stopped_at="enforce",
        blocked=True,
        violations=(Violation(rule="leak_test_origin", column="x", message="m"),),
    )
    batch = from_items(
        Batch(topic="crm", partition=3, items=(stopped, batch_of(record).items().items[0]))
    )
    encoded = coder.encode(batch)
    assert coder.decode(encoded) == batch
    assert coder.decode(encoded).items() == batch.items()
    # equal batches encode to equal bytes, whatever the order their records' keys were set in
    reordered = dict(reversed(list(record.items())))
    again = Batch(
        topic="crm",
        partition=3,
        items=(
            Item(
                source=stopped.source,
                record=reordered,
                schema=stopped.schema,
                stopped_at="enforce",
                blocked=True,
                violations=stopped.violations,
            ),
            batch_of(reordered).items().items[0],
        ),
    )
    again = from_items(again)
    assert coder.encode(again) == encoded
    with pytest.raises(TypeError, match="cannot encode a record value of type `set`"):
        coder.encode(batch_of({"bad": {1}}))


def test_validate_and_enforce_have_valid_quarantine_and_guarded_outputs() -> None:
    ok = with_id(make_record("HUMAN"), OTHER)
    leak = with_id(make_record("HUMAN", origin_env="TEST"), CHILD)
    invalid = with_id(make_record("SYNTHETIC", disclosure=None), PARENT)
    batch = batch_of(ok, leak, invalid)

    def ids(b: GuardBatch) -> tuple[Any, ...]:
        return tuple(
            (i.record["record_id"] if i.record else None, i.stopped_at) for i in b.items().items
        )

    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    checked = pipeline | beam.Create([batch]) | "Validate" >> ValidateProvenance()
    enforced = checked.valid | "Enforce" >> EnforcePolicies(["production"])
    chained = checked.guarded | "EnforceAll" >> EnforcePolicies(["production"])
    for name in ("valid", QUARANTINE, GUARDED):
        assert checked[name].element_type is GuardBatch
    assert_that(
        checked.valid | "v" >> beam.Map(ids), equal_to([((OTHER, None), (CHILD, None))]), "v"
    )
    assert_that(
        checked[QUARANTINE] | "q" >> beam.Map(ids), equal_to([((PARENT, "validate"),)]), "q"
    )
    assert_that(
        enforced[QUARANTINE] | "eq" >> beam.Map(ids), equal_to([((CHILD, "enforce"),)]), "eq"
    )
    assert_that(
        chained.guarded | "g" >> beam.Map(ids),
        equal_to([((OTHER, None), (CHILD, "enforce"), (PARENT, "validate"))]),
        "g",
    )
    proto = pipeline.to_runner_api()
    context = pipeline_context.PipelineContext(proto.components)
    coders = {
        type(context.coders[pc.coder_id]).__name__
        for label, pc in proto.components.pcollections.items()
        if "Validate" in pc.unique_name or "Enforce" in pc.unique_name
    }
    assert "BatchCoder" in coders and "PickleCoder" not in coders
    pipeline.run().wait_until_finish()


def test_guard_checks_records_without_beam(tmp_path: Path) -> None:
    guard = Guard(policies=["production", "tenant:acme"])
    parent = with_id(make_record("SYNTHETIC"), PARENT)
    child = with_id(make_record("HUMAN", parent_record_ids=[PARENT]), CHILD)
    other_tenant = {**with_id(make_record("HUMAN"), OTHER), "tenant_id": "globex"}
    results = guard.check([child, parent, other_tenant])
    assert [
        (r.record_id, r.decision, r.stage, [v.rule for v in r.violations]) for r in results
    ] == [
        (CHILD, "quarantined", "validate", ["class_below_parent"]),  # parent later in the call
        (PARENT, "allowed", None, []),
        (OTHER, "blocked", "enforce", ["tenant_mismatch"]),
    ]
    assert guard.check([]) == []
    # a parent the lineage store holds: found in a later call
    store = f"sqlite:///{tmp_path / 'lineage.db'}"
    recorder = LineageRecorder(store, pipeline="p", run_id="r", retry_s=1)
    recorder.record(batch_of(parent), allowed_to="a", quarantined_to="q")
    recorder.close()
    [alone] = Guard(lineage_store=store).check([child])
    assert alone.decision == "quarantined"
    [unseen] = Guard().check([child])
    assert unseen.allowed


def test_retried_batches_write_the_same_file_lines_once(tmp_path: Path) -> None:
    records = [with_id(make_record("HUMAN"), str(uuid.UUID(int=n))) for n in range(5)]
    first, second = batch_of(*records[:3], topic="in"), batch_of(*records[3:], topic="in", first=3)
    sink = FileSink(str(tmp_path), {"in": "in"})
    for batch in (second, first, first, second):  # out of order, each one retried
        sink.write(batch)
    finalize_files(str(tmp_path), {"in": "in"})
    lines = (tmp_path / "in.allowed.jsonl").read_text().splitlines()
    assert [json.loads(line)["record_id"] for line in lines] == [r["record_id"] for r in records]
    assert not (tmp_path / ".parts").exists()


def _parent_and_child(tmp_path: Path) -> tuple[Path, Path]:
    parents = tmp_path / "parents.jsonl"
    children = tmp_path / "children.jsonl"
    filler = [with_id(make_record("HUMAN"), str(uuid.UUID(int=n))) for n in range(50)]
    write_json_lines(parents, [*filler, with_id(make_record("SYNTHETIC"), PARENT)])
    child = with_id(make_record("HUMAN", parent_record_ids=[PARENT]), CHILD)
    write_json_lines(children, [child, *filler])
    return parents, children


TWO_WORKERS = ("--", "--direct_num_workers=2", "--direct_running_mode=multi_threading")


def _stopped(out: Path, name: str) -> list[tuple[str, list[str]]]:
    path = out / f"{name}.quarantine.jsonl"
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.open()]
    return [(e["record"]["record_id"], [v["rule"] for v in e["violations"]]) for e in entries]


def test_a_parent_in_another_partition_is_seen_with_two_workers(tmp_path: Path) -> None:
    parents, children = _parent_and_child(tmp_path)
    out = tmp_path / "out"
    for store in ("--no-lineage", f"--lineage-store=sqlite:///{tmp_path / 'l.db'}"):
        result = run_cli(
            "run", "--input", children, "--input", parents, "--output-dir", out,
            "--batch-size", "10", store, *TWO_WORKERS,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert _stopped(out, "children") == [(CHILD, ["class_below_parent"])]
        assert _stopped(out, "parents") == []


def test_a_parent_guarded_in_an_earlier_run_is_seen_through_the_lineage_store(
    tmp_path: Path,
) -> None:
    parents, children = _parent_and_child(tmp_path)
    store = f"sqlite:///{tmp_path / 'l.db'}"
    out = tmp_path / "out"
    for path in (parents, children):
        result = run_cli(
            "run", "--input", path, "--output-dir", out, "--lineage-store", store, *TWO_WORKERS
        )
        assert result.returncode == 0, result.stderr
    assert _stopped(out, "children") == [(CHILD, ["class_below_parent"])]
    # without the store, the earlier run is out of sight: the child passes
    result = run_cli("run", "--input", children, "--output-dir", out, "--no-lineage")
    assert result.returncode == 0, result.stderr
    assert _stopped(out, "children") == []


def test_relative_sqlite_is_refused_for_a_remote_runner_and_runner_failures_are_one_line(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.jsonl"
    write_json_lines(source, [make_record("HUMAN")])
    refused = run_cli(
        "run", "--input", source, "--output-dir", tmp_path / "out",
        "--lineage-store", "sqlite:///relative/lineage.db", "--runner", "PrismRunner",
    )  # fmt: skip
    assert refused.returncode == 3
    assert refused.stderr.startswith("lineage-guard: error: The lineage store `sqlite:///relative")
    assert len(refused.stderr.strip().splitlines()) == 1

    unknown = run_cli(
        "run", "--input", source, "--output-dir", tmp_path / "out", "--no-lineage",
        "--runner", "NoSuchRunner",
    )  # fmt: skip
    assert unknown.returncode == 3, unknown.stderr
    assert unknown.stderr.startswith("lineage-guard: error: Cannot use `--runner NoSuchRunner`")

    for runner in ("FlinkRunner", "apache_beam.runners.portability.spark_runner.SparkRunner"):
        no_job_server = run_cli(
            "run", "--input", source, "--output-dir", tmp_path / "out", "--no-lineage",
            "--runner", runner,
        )  # fmt: skip
        assert no_job_server.returncode == 3, no_job_server.stderr
        assert no_job_server.stderr.startswith("lineage-guard: error: `--runner "), runner
        assert len(no_job_server.stderr.strip().splitlines()) == 1, no_job_server.stderr  # no
        # download warnings from Beam first: nothing was started

    unreachable = run_cli(
        "run", "--input", source, "--output-dir", tmp_path / "out", "--no-lineage",
        "--runner", "PortableRunner", "--", "--job_endpoint=127.0.0.1:9",
        "--job_server_timeout=5",
    )  # fmt: skip
    assert unreachable.returncode == 4, unreachable.stderr
    lines = unreachable.stderr.strip().splitlines()
    assert lines[-1].startswith("lineage-guard: error: The `PortableRunner` runner could not")
    assert "Traceback" not in unreachable.stderr


def test_the_parent_index_knows_each_generated_record_by_its_highest_class() -> None:
    from lineage_guard.stages import ParentIndex, index_keys

    ids = [str(uuid.UUID(int=n)) for n in range(5000)]
    first = index_keys([(i, 2) for i in ids[:2000]] + [(i, 1) for i in ids[2000:4000]])
    second = index_keys([(ids[2500], 2), (ids[10], 1), ("not-a-uuid ✓", 1)])
    index = ParentIndex.merge([first, second])
    assert len(index.synthetic) == 16 * 2001 and len(index.ai_assisted) == 16 * 2002
    ranks = index.ranks_of([ids[0], ids[10], ids[2500], ids[3999], ids[4000], "not-a-uuid ✓"])
    assert ranks == {ids[0]: 2, ids[10]: 2, ids[2500]: 2, ids[3999]: 1, "not-a-uuid ✓": 1}
    assert ParentIndex.merge([]).ranks_of(ids) == {}


def test_a_bounded_run_over_several_partitions_uses_a_worker_process_per_core() -> None:
    from lineage_guard.guard import GuardConfig, worker_args
    from lineage_guard.transforms import FilesIO

    files = FilesIO(inputs=("/a", "/b", "/c"), out_dir="/out", names={})
    cores = os.cpu_count() or 1
    expected = [f"--direct_num_workers={min(3, cores)}"] if cores > 1 else []
    assert worker_args(GuardConfig(io=files), 3) == expected
    assert worker_args(GuardConfig(io=files), 1) == []  # one partition: one worker
    chosen = GuardConfig(io=files, beam_args=("--direct_num_workers=1",))
    assert worker_args(chosen, 3) == []  # the user's choice stands
    assert worker_args(GuardConfig(io=files, runner="PrismRunner"), 3) == []
