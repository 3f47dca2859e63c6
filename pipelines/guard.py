"""Builds and runs the guard's Beam pipeline.

    source ──► Decode ──► Validate ──► Enforce ──► Write (allowed | quarantine, + lineage)

The elements are micro-batches of one partition (`lineage_guard.items.Batch`): GX runs once per
batch, and a record that a stage stops stays in its batch, marked, so the write stage sees every
partition's records in offset order and can commit offsets only behind delivered records.
Lineage events are written before the records they cover are produced: if the store cannot be
written, nothing is delivered and no offset is committed (the guard fails closed).

The runner is always explicit (default: Beam's in-process `FnApiRunner`); Flink, Spark or
Dataflow take the same graph through `--runner` and Beam's own options.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from lineage_guard import stages
from lineage_guard.contract.policies import parse_policy
from lineage_guard.contract.records import provenance_of
from lineage_guard.contract.validate import SuiteValidator
from lineage_guard.io.decode import Decoder, registry_lookup
from lineage_guard.io.file_io import FileSink, read_file
from lineage_guard.io.kafka import KafkaSettings, KafkaSink, PartitionRange, read_range
from lineage_guard.items import Batch
from lineage_guard.recorder import LineageRecorder
from lineage_guard.stop import stop_requested

if TYPE_CHECKING:
    from lineage_guard.lineage.checkpoints import Checkpoint

log = logging.getLogger(__name__)
progress_log = logging.getLogger("lineage_guard.progress")

DEFAULT_RUNNER = "FnApiRunner"
NAMESPACE = "lineage_guard"


@dataclass(frozen=True, kw_only=True)
class KafkaIO:
    settings: KafkaSettings
    input_topics: tuple[str, ...]
    output_topic: str
    quarantine_topic: str


@dataclass(frozen=True, kw_only=True)
class FilesIO:
    inputs: tuple[str, ...]
    out_dir: str
    names: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class GuardConfig:
    io: KafkaIO | FilesIO
    policies: tuple[str, ...] = ("production",)
    raw_schema: str | None = None
    schema_registry: str | None = None
    lineage_store: str | None = None  # None: lineage off
    lineage_retry_s: float = 300.0
    signing_key: str | None = None  # an Ed25519 PEM file: sign the chain heads at the end
    batch_size: int = 2000
    engine: str = "compiled"
    pipeline_name: str = "lineage-guard"
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    runner: str = DEFAULT_RUNNER
    beam_args: tuple[str, ...] = ()


class ReadKafka(beam.DoFn):
    def __init__(self, io: KafkaIO, batch_size: int) -> None:
        self.io = io
        self.batch_size = batch_size

    def setup(self) -> None:
        self.consumer = self.io.settings.consumer()
        self.read = Metrics.counter(NAMESPACE, "read")

    def process(self, part: PartitionRange) -> Iterator[Batch]:
        timeout_s = self.io.settings.timeout_s
        for batch in read_range(self.consumer, part, self.batch_size, timeout_s, stop_requested):
            self.read.inc(len(batch.items))
            yield batch

    def teardown(self) -> None:
        self.consumer.close()


class ReadFiles(beam.DoFn):
    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def setup(self) -> None:
        self.read = Metrics.counter(NAMESPACE, "read")

    def process(self, path: str) -> Iterator[Batch]:
        for batch in read_file(path, self.batch_size):
            if stop_requested():  # a stop signal: read no further
                return
            self.read.inc(len(batch.items))
            yield batch


class DecodeBatches(beam.DoFn):
    def __init__(self, raw_schema: str | None, schema_registry: str | None) -> None:
        self.raw_schema = raw_schema
        self.schema_registry = schema_registry

    def setup(self) -> None:
        lookup = registry_lookup(self.schema_registry) if self.schema_registry else None
        self.decoder = Decoder(raw_schema=self.raw_schema, registry_lookup=lookup)

    def process(self, batch: Batch) -> Iterator[Batch]:
        yield stages.decode(batch, self.decoder)


class ValidateBatches(beam.DoFn):
    def __init__(self, engine: str) -> None:
        self.engine = engine

    def setup(self) -> None:
        self.validator = SuiteValidator(engine=self.engine)  # suites: once per worker

    def process(self, batch: Batch) -> Iterator[Batch]:
        yield stages.validate(batch, self.validator)


class EnforcePolicies(beam.DoFn):
    def __init__(self, policies: Sequence[str]) -> None:
        self.policy_texts = tuple(policies)

    def setup(self) -> None:
        self.policies = [parse_policy(text) for text in self.policy_texts]

    def process(self, batch: Batch) -> Iterator[Batch]:
        yield stages.enforce(batch, self.policies)


class WriteBatches(beam.DoFn):
    """Records lineage, then writes allowed and quarantined records, then commits."""

    def __init__(self, config: GuardConfig, expected: int | None) -> None:
        self.config = config
        self.expected = expected

    def setup(self) -> None:
        io = self.config.io
        self.recorder = (
            LineageRecorder(
                self.config.lineage_store,
                pipeline=self.config.pipeline_name,
                run_id=self.config.run_id,
                retry_s=self.config.lineage_retry_s,
            )
            if self.config.lineage_store
            else None
        )
        answered = self.recorder.confirm if self.recorder is not None else None
        if isinstance(io, KafkaIO):
            self.sink: KafkaSink | FileSink = KafkaSink(
                io.settings,
                output_topic=io.output_topic,
                quarantine_topic=io.quarantine_topic,
                on_answered=answered,
            )
        else:
            self.sink = FileSink(io.out_dir, io.names, on_answered=answered)
        self.counters: dict[str, Any] = {}
        self.written = 0
        self.started = self.last_report = time.monotonic()

    def process(self, batch: Batch) -> None:
        if stop_requested():  # a stop signal: deliver nothing more, commit nothing past here
            return
        receipt = None
        if self.recorder is not None:
            allowed_to, quarantined_to = self._destinations(batch)
            receipt = self.recorder.record(
                batch, allowed_to=allowed_to, quarantined_to=quarantined_to, stop=stop_requested
            )
            if receipt is None:  # stopped while the store was being retried
                return
        self.sink.write(batch, receipt)
        self._count(batch)

    def finish_bundle(self) -> None:
        self.sink.flush()

    def teardown(self) -> None:
        self.sink.close()
        if self.recorder is not None:
            self.recorder.close()

    def _destinations(self, batch: Batch) -> tuple[str, str]:
        if isinstance(self.sink, KafkaSink):
            return self.sink.output_topic, self.sink.quarantine_topic
        return self.sink.destinations(batch.topic)

    def _count(self, batch: Batch) -> None:
        """Counters named `outcome:…`, `content_class:…` and `origin_env:…` (see `Summary`)."""
        for item in batch.items:
            if item.allowed:
                outcome = "outcome:allowed"
            else:
                decision = "blocked" if item.blocked else "quarantined"
                rules = ",".join(sorted({v.rule for v in item.violations}))
                outcome = f"outcome:{decision}:{item.stopped_at}:{rules}"
            provenance = provenance_of(item.record)
            content_class = provenance.get("content_class")
            names = [
                outcome,
                f"content_class:{content_class}",
                f"origin_env:{provenance.get('origin_env')}",
            ]
            if item.allowed:  # what a training export received: its synthetic ratio
                names.append(f"allowed_class:{content_class}")
            for name in names:
                counter = self.counters.get(name)
                if counter is None:
                    counter = self.counters[name] = Metrics.counter(NAMESPACE, name)
                counter.inc()
        self.written += len(batch.items)
        now = time.monotonic()
        if now - self.last_report >= 2.0:
            self.last_report = now
            rate = self.written / max(now - self.started, 1e-9)
            total = f"/{self.expected}" if self.expected is not None else ""
            progress_log.info("guarded %d%s records (%.0f records/s)", self.written, total, rate)


def build(
    pipeline: beam.Pipeline, config: GuardConfig, ranges: Sequence[PartitionRange] = ()
) -> None:
    io = config.io
    if isinstance(io, KafkaIO):
        expected: int | None = sum(r.size for r in ranges)
        batches = (
            pipeline
            | "Partitions" >> beam.Create(list(ranges))
            | "Spread" >> beam.Reshuffle()
            | "ReadKafka" >> beam.ParDo(ReadKafka(io, config.batch_size))
        )
    else:
        expected = None
        batches = (
            pipeline
            | "Files" >> beam.Create(list(io.inputs))
            | "ReadFiles" >> beam.ParDo(ReadFiles(config.batch_size))
        )
    _ = (
        batches
        | "Decode" >> beam.ParDo(DecodeBatches(config.raw_schema, config.schema_registry))
        | "Validate" >> beam.ParDo(ValidateBatches(config.engine))
        | "Enforce" >> beam.ParDo(EnforcePolicies(config.policies))
        | "Write" >> beam.ParDo(WriteBatches(config, expected))
    )


@dataclass(kw_only=True)
class Summary:
    """A run's counters: `read`, `outcome:allowed`, `outcome:quarantined:STAGE:RULES`,
    `outcome:blocked:STAGE:RULES`, `content_class:X`, `origin_env:X`."""

    counters: dict[str, int] = field(default_factory=dict)

    @property
    def read(self) -> int:
        return self.counters.get("read", 0)

    @property
    def allowed(self) -> int:
        return self.counters.get("outcome:allowed", 0)

    @property
    def stopped(self) -> dict[str, int]:
        """`quarantined:STAGE:RULES` / `blocked:STAGE:RULES` → count."""
        return {
            k.removeprefix("outcome:"): n
            for k, n in self.counters.items()
            if k.startswith(("outcome:quarantined:", "outcome:blocked:"))
        }

    @property
    def quarantined(self) -> int:
        return sum(n for k, n in self.stopped.items() if k.startswith("quarantined:"))

    @property
    def blocked(self) -> int:
        return sum(n for k, n in self.stopped.items() if k.startswith("blocked:"))

    def by(self, prefix: str) -> dict[str, int]:
        """Counts under one prefix, e.g. `by("content_class")` → {"HUMAN": 12, …}."""
        return {  # a copy first: the OpenLineage heartbeat reads while the run adds
            k.split(":", 1)[1]: n
            for k, n in list(self.counters.items())
            if k.startswith(prefix + ":")
        }

    def decisions(self) -> dict[str, int]:
        return {"allowed": self.allowed, "quarantined": self.quarantined, "blocked": self.blocked}

    def add(self, other: Summary) -> None:
        for key, n in other.counters.items():
            self.counters[key] = self.counters.get(key, 0) + n


def run_once(config: GuardConfig) -> Summary:
    """One bounded run: Kafka up to the end offsets present now, or every input file."""
    from lineage_guard.io.kafka import plan_ranges

    ranges: list[PartitionRange] = []
    if isinstance(config.io, KafkaIO):
        ranges = plan_ranges(config.io.settings, list(config.io.input_topics))
        if not ranges:
            return Summary()
    options = PipelineOptions([f"--runner={config.runner}", *config.beam_args])
    pipeline = beam.Pipeline(options=options)
    build(pipeline, config, ranges)
    result = pipeline.run()
    result.wait_until_finish()
    return _summary(result)


def sign_checkpoint(config: GuardConfig) -> Checkpoint | None:
    """With `config.signing_key`, sign the lineage store's chain heads now (at the end of a
    run, on the launcher) and keep the checkpoint in the store; None without a key."""
    if not (config.signing_key and config.lineage_store):
        return None
    from lineage_guard.lineage.checkpoints import load_private_key

    recorder = LineageRecorder(
        config.lineage_store,
        pipeline=config.pipeline_name,
        run_id=config.run_id,
        retry_s=config.lineage_retry_s,
    )
    try:
        return recorder.sign(load_private_key(config.signing_key))
    finally:
        recorder.close()


def _summary(result: Any) -> Summary:
    summary = Summary()
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        name, value = counter.key.metric.name, counter.committed or counter.attempted or 0
        summary.counters[name] = summary.counters.get(name, 0) + value
    return summary
