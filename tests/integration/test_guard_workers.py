"""More than one Beam worker over a partitioned topic decides exactly as the stages do alone.

`bench/throughput.py --partitions 3` runs the guard with `--direct_num_workers 3`; this test
proves, on the real broker, that the allowed and the quarantine topic then receive exactly the
records the stages (decode → validate → enforce, one process, no Beam) send there, with one
worker and with three (threads and processes), and that the lineage the concurrent workers
wrote into one SQLite store verifies, one chain per partition.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from lineage_guard.contract.policies import parse_policy
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.generate import Faults, generate
from lineage_guard.io.decode import Decoder, encode_single_object
from lineage_guard.items import Batch, Item, Source
from tests import reference_chain as stages
from tests.cli import run_cli
from tests.integration.kafka_helpers import drain, guard_args, guard_cli, new_topics, produce

RECORDS = 3000
PARTITIONS = 3
Message = tuple[bytes, bytes, list[tuple[str, bytes]]]


def _messages() -> list[Message]:
    out = []
    for g in generate(RECORDS, seed=5, faults=Faults(stripped=0.05, test_origin=0.02)):
        record = g.record
        if record["provenance"] is None:  # the contract schema cannot carry a null
            record["provenance"] = {
                "content_class": "SYNTHETIC", "origin_env": "PRODUCTION",
                "source_system": "crm-sync", "generator": None, "generated_at": None,
                "disclosure": None, "parent_record_ids": [],
            }  # fmt: skip
        out.append((record["record_id"].encode(), encode_single_object(record, g.schema), []))
    return out


def _expected(messages: list[Message]) -> tuple[Counter[bytes], Counter[bytes]]:
    """The keys the stages alone allow and quarantine."""
    items = tuple(
        Item(source=Source(topic="t", partition=0, offset=n, key=key, value=value))
        for n, (key, value, _) in enumerate(messages)
    )
    batch = stages.decode(Batch(topic="t", partition=0, items=items), Decoder())
    batch = stages.enforce(stages.validate(batch, SuiteValidator()), [parse_policy("production")])
    allowed = Counter(i.source.key for i in batch.items if i.allowed and i.source.key)
    stopped = Counter(i.source.key for i in batch.items if not i.allowed and i.source.key)
    return allowed, stopped


@pytest.fixture(scope="module")
def source(kafka_bootstrap: str) -> tuple[str, Counter[bytes], Counter[bytes]]:
    messages = _messages()
    (src,) = new_topics(kafka_bootstrap, "workers-src", partitions=PARTITIONS)
    produce(kafka_bootstrap, src, messages, partitions=PARTITIONS)
    allowed, quarantined = _expected(messages)
    # The run below must have something to decide on both sides.
    assert sum(allowed.values()) + sum(quarantined.values()) == RECORDS
    assert sum(quarantined.values()) >= 100 and sum(allowed.values()) >= 2500
    return src, allowed, quarantined


@pytest.mark.parametrize(
    "workers",
    [[], ["--direct_num_workers=3", "--direct_running_mode=multi_threading"],
     ["--direct_num_workers=3", "--direct_running_mode=multi_processing"]],
    ids=["one-worker", "3-threads", "3-processes"],
)  # fmt: skip
def test_workers_send_every_record_where_the_stages_do(
    kafka_bootstrap: str,
    source: tuple[str, Counter[bytes], Counter[bytes]],
    workers: list[str],
    tmp_path: Path,
) -> None:
    src, allowed, quarantined = source
    out, quarantine = new_topics(kafka_bootstrap, "workers-out", "workers-q")
    store = f"sqlite:///{tmp_path}/lineage.db"
    result = guard_cli(
        *guard_args(kafka_bootstrap, src, out, quarantine, f"workers-{tmp_path.name}"),
        "--lineage-store", store, "--batch-size", "400",
        *(["--", *workers] if workers else []),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Counter(m.key for m in drain(kafka_bootstrap, out, sum(allowed.values()))) == allowed
    got = Counter(m.key for m in drain(kafka_bootstrap, quarantine, sum(quarantined.values())))
    assert got == quarantined

    verified = run_cli("lineage", "verify", "--lineage-store", store)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"ok: {PARTITIONS} chains," in verified.stdout
    assert f", {RECORDS} hops" in verified.stdout
